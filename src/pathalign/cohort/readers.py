"""Readers of molecular tables: matrices (TSV/CSV/Parquet, gzip, either orientation) and MAF.

Every reader returns a samples x features ``DataFrame`` of floats (index = sample ids as
written in the file) and raises :class:`CohortInputError` naming the file, row and column of
anything it cannot read.

A sample that appears twice in one matrix (a repeated column in a Xena-style file) is kept
once when both copies are identical (reported as a dropped duplicate) and is an error naming
the sample when they differ: there is no right copy to choose.
"""
from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from .ids import CohortInputError, Drop, IdRule, source_name

NON_SILENT_CLASSES = frozenset({
    "Missense_Mutation", "Nonsense_Mutation", "Nonstop_Mutation", "Frame_Shift_Del", "Frame_Shift_Ins",
    "In_Frame_Del", "In_Frame_Ins", "Splice_Site", "Translation_Start_Site",
})
MAF_REQUIRED = ("Hugo_Symbol", "Tumor_Sample_Barcode", "Variant_Classification")
ORIENTATIONS = ("auto", "samples-as-columns", "samples-as-rows")
COMMA_NUMBER = re.compile(r"^[+-]?\d*,\d+(?:[eE][+-]?\d+)?$")


def read_table(path: str | Path, text: bool = False) -> pd.DataFrame:
    """A TSV/CSV/Parquet file (gzip allowed) as strings-in-first-column DataFrame, no index set.

    Args:
        path: the file.
        text: read every cell of a TSV/CSV as the string written (no NA guessing, no numbers).
    """
    path = Path(path)
    if not path.is_file():
        raise CohortInputError(f"{path}: no such file")
    name = path.name.lower()
    try:
        if name.endswith(".parquet") or name.endswith(".pq"):
            df = pd.read_parquet(path)
            if df.index.name is not None or not isinstance(df.index, pd.RangeIndex):
                df = df.reset_index()
            return df
        sep = "," if ".csv" in name else "\t"
        if text:
            df = pd.read_csv(path, sep=sep, comment=None, dtype=str, keep_default_na=False, na_filter=False)
        else:
            df = pd.read_csv(path, sep=sep, comment=None, low_memory=False, na_values=["NA", "NaN", "nan", ""],
                             keep_default_na=True)
        # pandas renames a repeated header ('X', 'X.1'); keep the names as written so repeats can be checked
        header = pd.read_csv(path, sep=sep, header=None, nrows=1, dtype=str, keep_default_na=False).iloc[0]
        if len(header) == df.shape[1] and header.duplicated().any():
            df.columns = [str(h) for h in header]
        return df
    except Exception as e:  # noqa: BLE001
        raise CohortInputError(f"{path}: cannot read table ({type(e).__name__}: {e})") from None


def read_matrix(path: str | Path, rule: IdRule, orientation: str = "auto",
                drops: list[Drop] | None = None, decimal: str = "point") -> pd.DataFrame:
    """A numeric matrix as samples x features.

    Args:
        path: TSV/CSV/Parquet (``.gz`` allowed); the first column holds row names.
        rule: the id rule; sample ids are recognised by it.
        orientation: ``auto`` (the axis whose names are sample ids), ``samples-as-columns``
            (features x samples, Xena style) or ``samples-as-rows``.
        drops: where identical repeated samples that were merged are reported (optional).
        decimal: ``comma`` reads ``0,79`` as 0.79; otherwise (``point``, ``auto``) such a value is
            an error whose message names ``--decimal comma`` (a matrix's ``1,234`` could be a count).

    Returns:
        samples x features float64 ``DataFrame``, one row per sample id.

    Raises:
        CohortInputError: unreadable file, no sample axis, a non-numeric value, a repeated
            feature, or a repeated sample whose copies differ.
    """
    if orientation not in ORIENTATIONS:
        raise CohortInputError(f"orientation must be one of {ORIENTATIONS}, got {orientation!r}")
    raw = read_table(path)
    if raw.shape[1] < 2:
        raise CohortInputError(f"{path}: needs a row-name column and at least one data column")
    row_names = raw.iloc[:, 0].astype(str).str.strip()
    body = raw.iloc[:, 1:]
    col_names = pd.Index([str(c).strip() for c in body.columns])
    if orientation == "auto":
        col_hits = np.mean([rule.looks_like_sample(c) for c in col_names])
        row_hits = np.mean([rule.looks_like_sample(r) for r in row_names])
        if max(col_hits, row_hits) < 0.5:
            raise CohortInputError(
                f"{path}: no axis holds sample ids under the '{rule.kind}' rule "
                f"(first columns: {list(col_names[:3])}, first rows: {list(row_names[:3])}); "
                "set the orientation or check the id rule")
        orientation = "samples-as-columns" if col_hits >= row_hits else "samples-as-rows"
    if decimal == "comma":
        body = body.apply(lambda col: col if pd.api.types.is_numeric_dtype(col) else col.str.replace(",", ".", regex=False))
    values = body.apply(pd.to_numeric, errors="coerce")
    bad = values.isna() & body.notna()
    if bad.any().any():
        r, c = np.argwhere(bad.to_numpy())[0]
        cell = body.iat[r, c]
        hint = ("; it looks like a number with a decimal comma: declare --decimal comma"
                if COMMA_NUMBER.match(str(cell).strip()) else "")
        raise CohortInputError(f"{path}: non-numeric value {cell!r} at row {r + 2} "
                               f"('{row_names.iat[r]}'), column '{col_names[c]}'{hint}")
    df = pd.DataFrame(values.to_numpy(np.float64), index=row_names.to_numpy(), columns=col_names)
    if orientation == "samples-as-columns":
        df = df.T
    df.index.name, df.columns.name = "sample", "feature"
    dup = df.columns[df.columns.duplicated()]
    if len(dup):
        raise CohortInputError(f"{path}: feature {dup[0]!r} appears more than once")
    return _merge_repeated_samples(df, path, drops)


def _merge_repeated_samples(df: pd.DataFrame, path, drops: list[Drop] | None) -> pd.DataFrame:
    """One row per sample: identical repeats merged (and reported), differing repeats an error."""
    repeated = df.index[df.index.duplicated()].unique()
    if len(repeated) == 0:
        return df
    for sample in repeated:
        copies = df.loc[[sample]].to_numpy()  # [k, F]
        differ = ~((copies == copies[0]) | (np.isnan(copies) & np.isnan(copies[0]))).all(axis=0)
        if differ.any():
            j = int(np.flatnonzero(differ)[0])
            vals = ", ".join(str(v) for v in copies[:, j])
            raise CohortInputError(f"{path}: sample {sample!r} appears {len(copies)} times with different values "
                                   f"({int(differ.sum())} features differ, e.g. '{df.columns[j]}': {vals}); "
                                   "remove the wrong copy")
        if drops is not None:
            drops.extend(Drop(source_name(path), str(sample), "identical repeated sample in the file; kept one copy")
                         for _ in range(len(copies) - 1))
    return df[~df.index.duplicated(keep="first")]


def _no_non_silent(frames: list) -> str:
    """The error for MAF files that hold no non-silent call: the modality, the files, the classes seen."""
    names = ", ".join(str(f[2]) for f in frames)
    classes = pd.concat([f[3] for f in frames]).fillna("(empty)").value_counts()
    seen = ", ".join(f"{c} {n}" for c, n in classes.head(6).items()) or "no calls at all"
    n_samples = len(set().union(*[set(f[1]) for f in frames]))
    return (f"{names}: mutations (snp): no non-silent call in {int(classes.sum())} calls of {n_samples} samples "
            f"(classes: {seen}); the mutation modality would have no feature. Counted classes: "
            f"{', '.join(sorted(NON_SILENT_CLASSES))}; give the MAF with the coding calls, or leave out --maf")


def read_maf(paths: str | Path | Iterable[str | Path], rule: IdRule | None = None) -> pd.DataFrame:
    """Binary samples x genes matrix of non-silent mutations from one or more MAF files.

    ``#`` comment lines are skipped; a gene counts once per sample however many calls it has;
    silent and non-coding classes (``Silent``, ``Intron``, ``3'UTR`` ...) are ignored.

    Raises:
        CohortInputError: a file is missing, unreadable or lacks a required column, or the
            files hold no non-silent call at all (the message names them and the classes seen).
    """
    frames = []
    for path in [paths] if isinstance(paths, (str, Path)) else paths:
        path = Path(path)
        if not path.is_file():
            raise CohortInputError(f"{path}: no such file")
        try:
            maf = pd.read_csv(path, sep="\t", comment="#", dtype=str, low_memory=False,
                              compression="infer")
        except Exception as e:  # noqa: BLE001
            raise CohortInputError(f"{path}: cannot read MAF ({type(e).__name__}: {e})") from None
        missing = [c for c in MAF_REQUIRED if c not in maf.columns]
        if missing:
            raise CohortInputError(f"{path}: MAF lacks required column(s) {missing}")
        hits = maf[maf.Variant_Classification.isin(NON_SILENT_CLASSES)]
        samples = maf.Tumor_Sample_Barcode.dropna().unique()
        frames.append((hits[["Tumor_Sample_Barcode", "Hugo_Symbol"]], samples, path, maf.Variant_Classification))
    all_hits = pd.concat([f[0] for f in frames])
    if all_hits.Hugo_Symbol.dropna().empty:
        raise CohortInputError(_no_non_silent(frames))
    samples = sorted(set().union(*[set(f[1]) for f in frames]))
    genes = sorted(all_hits.Hugo_Symbol.dropna().unique())
    index, columns = pd.Index(samples, name="sample"), pd.Index(genes, name="feature")
    values = np.zeros((len(index), len(columns)))
    if len(all_hits):
        pairs = all_hits.dropna().drop_duplicates()
        values[index.get_indexer(pairs.Tumor_Sample_Barcode), columns.get_indexer(pairs.Hugo_Symbol)] = 1.0
    return pd.DataFrame(values, index=index, columns=columns)
