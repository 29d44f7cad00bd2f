"""GISTIC 2 output folders (as Firehose and GDC ship them) read as per-sample copy-number calls.

``cohort build --cnv DIR`` reads, in this order of preference:

1. ``all_thresholded.by_genes.txt`` (Firehose) — gene-level calls: columns ``Gene Symbol``,
   ``Locus ID``, ``Cytoband``, then one column per sample with -2, -1, 0, 1, 2 (deep/shallow
   deletion, none, gain/amplification); else GDC's ``<project>.focal_score_by_genes.txt``
   (``Gene Symbol``, ``Gene ID``, ``Cytoband``, then -1, 0, 1 per aliquot; its columns are
   aliquot UUIDs, so it needs ``--id-rule table``). Features are the gene symbols (a symbol
   listed twice gets ``|<Locus ID>``).
2. else ``all_lesions.conf_XX.txt`` — lesion-level calls: one row per significant peak
   (``Amplification Peak N`` / ``Deletion Peak N``, ``Descriptor`` = cytoband), with meta
   columns up to ``Amplitude Threshold`` and then the samples. The first block of rows holds
   the thresholded calls 0/1/2 (0: not altered; 1: beyond the low threshold; 2: beyond the
   high threshold); the rows ``... - CN values`` (``Actual Copy Change Given``) repeat the
   peaks with the log2 ratios and are not read. Deletions are given the negative sign, so the
   values are on the same -2..2 scale as gene-level calls. Features are named
   ``amp_<cytoband>`` / ``del_<cytoband>`` (``_2``, ``_3`` ... when a cytoband holds several
   peaks of one kind). ``amp_genes.conf_XX.txt`` / ``del_genes.conf_XX.txt``, when present,
   give the genes of each peak's wide region; they are listed in ``report.md``.

``scores.gistic`` holds the cohort's G-scores per genomic segment, not per-sample calls: it is
not read (a folder with nothing else is an error).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .ids import CohortInputError

GENE_LEVEL = "all_thresholded.by_genes.txt"
GDC_GENE_LEVEL = "*focal_score_by_genes.txt"  # GDC "Gene Level Copy Number Scores" (-1, 0, 1)
GENE_META = ("Gene Symbol", "Locus ID", "Gene ID", "Cytoband")
LESION_LAST_META = "Amplitude Threshold"
CN_VALUES = "Actual Copy Change Given"


@dataclass
class GisticCalls:
    """Calls read from a GISTIC 2 folder.

    Attributes:
        values: samples x features calls (-2..2), sample ids as written.
        file: the file they came from.
        level: ``gene`` or ``lesion``.
        genes: lesion feature -> genes of its wide peak (from amp/del_genes, when present).
    """

    values: pd.DataFrame
    file: Path
    level: str
    genes: dict[str, list[str]] = field(default_factory=dict)

    def report(self) -> list[str]:
        """The report.md section (Markdown lines)."""
        lines = ["## Copy number from a GISTIC 2 folder", "",
                 f"Read `{self.file.name}` ({self.level}-level calls, -2..2, deletions negative): "
                 f"{self.values.shape[1]} features, {len(self.values)} samples."]
        if self.level == "lesion":
            lines += ["", "| feature | genes in the wide peak |", "|---|---|"]
            for feat in self.values.columns:
                genes = self.genes.get(feat, [])
                shown = ", ".join(genes[:12]) + (f", ... ({len(genes)} genes)" if len(genes) > 12 else "")
                shown = shown.replace("|", "\\|")  # Firehose names such as SNORA40|ENSG... inside a table cell
                lines.append(f"| {feat} | {shown or '—'} |")
        return lines + [""]


def _read(path: Path) -> pd.DataFrame:
    try:
        df = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    except Exception as e:  # noqa: BLE001
        raise CohortInputError(f"{path}: cannot read GISTIC file ({type(e).__name__}: {e})") from None
    empty = [c for c in df.columns if str(c).startswith("Unnamed:") and (df[c].str.strip() == "").all()]
    return df.drop(columns=empty)  # GISTIC ends its rows with a tab


def _numbers(block: pd.DataFrame, path: Path) -> np.ndarray:
    values = block.apply(lambda col: pd.to_numeric(col.str.strip(), errors="coerce"))
    bad = values.isna() & (block.apply(lambda col: col.str.strip()) != "")
    if bad.to_numpy().any():
        r, c = np.argwhere(bad.to_numpy())[0]
        raise CohortInputError(f"{path}: non-numeric call {block.iat[r, c]!r} in sample column '{block.columns[c]}'")
    return values.to_numpy(np.float64)


def _gene_level(path: Path) -> GisticCalls:
    df = _read(path)
    if "Gene Symbol" not in df.columns:
        raise CohortInputError(f"{path}: not a GISTIC gene table (no 'Gene Symbol' column)")
    names = df["Gene Symbol"].str.strip()
    repeated = names.duplicated(keep=False)
    locus = next((c for c in ("Locus ID", "Gene ID") if c in df.columns), None)
    if repeated.any() and locus is not None:
        names = names.where(~repeated, names + "|" + df[locus].str.strip())
    samples = [c for c in df.columns if c not in GENE_META]
    values = _numbers(df[samples], path)  # [genes, samples]
    return GisticCalls(pd.DataFrame(values.T, index=pd.Index(samples, name="sample"),
                                    columns=pd.Index(names, name="feature")), path, "gene")


def _peak_genes(path: Path) -> list[tuple[str, list[str]]]:
    """``(cytoband, genes)`` per peak of an amp_genes/del_genes file (peaks are columns)."""
    df = pd.read_csv(path, sep="\t", header=None, dtype=str, keep_default_na=False)
    labels = df.iloc[:, 0].str.strip().str.lower()
    start = labels.tolist().index("genes in wide peak") if "genes in wide peak" in labels.tolist() else None
    band_row = labels.tolist().index("cytoband") if "cytoband" in labels.tolist() else 0
    peaks = []
    for j in range(1, df.shape[1]):
        band = df.iat[band_row, j].strip()
        if not band:
            continue
        genes = [] if start is None else [g.strip() for g in df.iloc[start:, j] if g.strip()]
        peaks.append((band, genes))
    return peaks


def _lesion_level(path: Path, folder: Path) -> GisticCalls:
    df = _read(path)
    for col in ("Unique Name", "Descriptor", LESION_LAST_META):
        if col not in df.columns:
            raise CohortInputError(f"{path}: not a GISTIC all_lesions file (no '{col}' column)")
    samples = list(df.columns[list(df.columns).index(LESION_LAST_META) + 1:])
    if not samples:
        raise CohortInputError(f"{path}: no sample columns after '{LESION_LAST_META}'")
    name = df["Unique Name"].str.strip()
    calls = df[(df[LESION_LAST_META].str.strip() != CN_VALUES) & ~name.str.endswith("CN values")]
    kind = np.where(calls["Unique Name"].str.strip().str.startswith("Amplification"), "amp",
                    np.where(calls["Unique Name"].str.strip().str.startswith("Deletion"), "del", ""))
    if (kind == "").any():
        raise CohortInputError(f"{path}: lesion {calls['Unique Name'].iat[int(np.flatnonzero(kind == '')[0])]!r} is "
                               "neither an 'Amplification Peak' nor a 'Deletion Peak'")
    values = _numbers(calls[samples], path)  # [peaks, samples], 0/1/2
    bad = np.isfinite(values) & ~np.isin(values, (0.0, 1.0, 2.0))
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise CohortInputError(f"{path}: thresholded lesion calls must be 0, 1 or 2; got {values[r, c]:g} for "
                               f"'{calls['Unique Name'].iat[r]}', sample '{samples[c]}'")
    sign = np.where(kind == "amp", 1.0, -1.0)[:, None]
    seen: dict[str, int] = {}
    names = []
    for k, band in zip(kind, calls["Descriptor"].str.strip()):
        base = f"{k}_{band}"
        seen[base] = seen.get(base, 0) + 1
        names.append(base if seen[base] == 1 else f"{base}_{seen[base]}")
    out = GisticCalls(pd.DataFrame((sign * values).T, index=pd.Index(samples, name="sample"),
                                   columns=pd.Index(names, name="feature")), path, "lesion")
    conf = path.name.removeprefix("all_lesions.")
    for k in ("amp", "del"):
        genes_file = folder / f"{k}_genes.{conf}"
        if genes_file.is_file():
            count: dict[str, int] = {}
            for band, genes in _peak_genes(genes_file):
                count[band] = count.get(band, 0) + 1
                feat = f"{k}_{band}" if count[band] == 1 else f"{k}_{band}_{count[band]}"
                if feat in out.values.columns:
                    out.genes[feat] = genes
    return out


def read_gistic_folder(folder: str | Path) -> GisticCalls:
    """Per-sample copy-number calls from a GISTIC 2 output folder (module docstring).

    Args:
        folder: the folder GISTIC wrote (or Firehose's/GDC's copy of it).

    Returns:
        The calls, samples x features, and where they came from.

    Raises:
        CohortInputError: no file with per-sample calls, several ``all_lesions`` files, or a
            malformed file (the message names it).
    """
    folder = Path(folder)
    if (folder / GENE_LEVEL).is_file():
        return _gene_level(folder / GENE_LEVEL)
    gdc = sorted(folder.glob(GDC_GENE_LEVEL))
    if len(gdc) == 1:
        return _gene_level(gdc[0])
    lesions = sorted(folder.glob("all_lesions.conf_*.txt"))
    if len(lesions) > 1:
        raise CohortInputError(f"--cnv {folder}: several lesion files ({', '.join(p.name for p in lesions)}); "
                               "give a folder with one GISTIC run")
    if lesions:
        return _lesion_level(lesions[0], folder)
    held = sorted(p.name for p in folder.iterdir())[:6]
    raise CohortInputError(f"--cnv {folder}: a GISTIC folder with no per-sample calls (neither {GENE_LEVEL} nor "
                           f"all_lesions.conf_XX.txt; it holds {', '.join(held) or 'nothing'}); scores.gistic and "
                           "amp_genes/del_genes are cohort-level summaries")
