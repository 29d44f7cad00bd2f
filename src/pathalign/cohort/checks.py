"""Value rules of ``cohort build``: what each declared unit allows, and samples with no values.

Each rule either stops the build with a :class:`CohortInputError` naming the file, the count
and a first offending sample/feature, or returns a named warning for the report. The rules
(docs/cohort.md) are:

* any modality: ``inf`` values are an error; a sample whose values are all missing (NaN)
  does not count as present (dropped and reported);
* RNA (``tpm``, ``fpkm``, ``counts``, ``log2tpm``, ``log2fpkm`` — the log units are
  log2(x + p), p the declared pseudocount, 1 by default): a value below log2(p) (a negative
  one for p = 1) by more than the rounding tolerance ``LOG_RNA_TOLERANCE`` is an error (within
  it, x is clipped to 0); log units with values above 25 (2^25 TPM cannot occur) are an
  error (linear values declared as log); linear units whose largest value is below 30 get a
  warning (they look log-transformed); log values with p != 1 are stored as log2(x + 1);
* methylation: declared ``beta`` must lie in [0, 1], up to a rounding tolerance
  (``BETA_TOLERANCE``; such values are clipped); values in [0, 100] are recognised as
  percent and are an error unless ``percent`` is declared, which divides them by 100;
  values in [-0.5, 0.5] are named as centred beta (beta - 0.5); others that look like
  M-values are an error naming ``mvalue``, which converts them: beta = 2^M / (1 + 2^M);
* CNV: declared ``gistic`` must be the thresholded calls -2, -1, 0, 1, 2; ``log2`` ratios
  are any finite number.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from .ids import CohortInputError, Drop

METHYLATION_UNITS = ("beta", "percent", "mvalue")
LOG_RNA_MAX = 25.0  # log2(TPM + 1) of 1e6 TPM is ~20
LINEAR_RNA_MIN_MAX = 30.0
BETA_TOLERANCE = 1e-4  # rounding of written beta values (1.0000001, -1e-9) is accepted and clipped
LOG_RNA_TOLERANCE = 1e-3  # log2(x + p) written rounded (Toil: -9.9658 for log2(0.001)) falls a hair below log2(p)
M_VALUE_MAX = 20.0  # |M| = 20 is beta 1e-6 from 0 or 1; larger magnitudes are not M-values either


def drop_empty_samples(mat: pd.DataFrame, source: str, drops: list[Drop]) -> pd.DataFrame:
    """Rows (samples) whose values are all NaN removed and reported in ``drops``."""
    empty = mat.isna().all(axis=1).to_numpy() if mat.shape[1] else np.ones(len(mat), bool)
    drops.extend(Drop(source, str(s), "all values missing (NaN); not counted as present") for s in mat.index[empty])
    return mat[~empty]


def _first(mat: pd.DataFrame, bad: np.ndarray) -> str:
    r, c = np.argwhere(bad)[0]
    return f"first at sample '{mat.index[r]}', feature '{mat.columns[c]}': {float(mat.iat[r, c]):.10g}"


def _count(bad: np.ndarray, observed: int) -> str:
    n = int(bad.sum())
    return f"{n} of {observed} observed values ({n / max(observed, 1):.1%})"


def check_values(mat: pd.DataFrame, modality: str, units: str, source: str,
                 pseudocount: float = 1.0) -> tuple[pd.DataFrame, list[str]]:
    """Check ``mat`` (samples x features) against the rules of ``modality`` in ``units``.

    Args:
        mat: raw values as read.
        modality: ``rna``, ``cnv``, ``methylation`` or ``snp``.
        units: the declared units (RNA units, CNV kind, methylation units).
        source: file name used in messages.
        pseudocount: p of log RNA units, log2(x + p).

    Returns:
        The values in the cohort's units (methylation percent and M-values → beta, log RNA →
        log2(x + 1)) and the warnings.

    Raises:
        CohortInputError: a value its unit cannot take.
    """
    values = mat.to_numpy(np.float64)
    observed = int(np.isfinite(values).sum())
    inf = np.isinf(values)
    if inf.any():
        raise CohortInputError(f"{source}: {_count(inf, observed)} are infinite; {_first(mat, inf)}")
    warnings: list[str] = []
    with np.errstate(invalid="ignore"):
        if modality == "rna":
            mat = _check_rna(mat, values, units, source, observed, pseudocount, warnings)
        elif modality == "methylation":
            mat = _check_methylation(mat, values, units, source, observed, warnings)
        elif modality == "cnv" and units == "gistic":
            bad = np.isfinite(values) & ~np.isin(values, (-2.0, -1.0, 0.0, 1.0, 2.0))
            if bad.any():
                raise CohortInputError(
                    f"{source}: declared GISTIC thresholded calls (-2..2) but {_count(bad, observed)} are not one of "
                    f"-2, -1, 0, 1, 2 ({_first(mat, bad)}); for log2 ratios declare --cnv-kind log2")
    return mat, warnings


def _check_rna(mat: pd.DataFrame, values: np.ndarray, units: str, source: str, observed: int, pseudocount: float,
               warnings: list[str]) -> pd.DataFrame:
    """RNA rules (module docstring); log values with pseudocount p are returned as log2(x + 1)."""
    log = units.startswith("log2")
    floor = float(np.log2(pseudocount)) if log else 0.0
    neg = values < floor - (LOG_RNA_TOLERANCE if log else 0.0)
    if neg.any():
        if log and pseudocount != 1:
            raise CohortInputError(
                f"{source}: {_count(neg, observed)} are below log2({pseudocount:g}) = {floor:.6g}, which "
                f"log2(x + {pseudocount:g}) cannot be ({_first(mat, neg)}); check --rna-pseudocount")
        hint = ("; if these are log2(x + p) with p < 1 (Xena/Toil write log2(TPM + 0.001)), declare "
                "--rna-pseudocount p" if log else "")
        raise CohortInputError(
            f"{source}: {_count(neg, observed)} are negative, which RNA in {units} cannot be "
            f"({_first(mat, neg)}); give TPM, FPKM, counts or log2(x+1), not z-scores or log ratios{hint}")
    top = np.nanmax(values) if observed else 0.0
    if log and top > LOG_RNA_MAX:
        big = values > LOG_RNA_MAX
        raise CohortInputError(
            f"{source}: declared {units} (log2(x+{pseudocount:g})) but {_count(big, observed)} exceed {LOG_RNA_MAX:g} "
            f"(max {top:g}; {_first(mat, big)}); these look linear: declare --rna-units "
            f"{units.removeprefix('log2')}")
    if not log and observed and top < LINEAR_RNA_MIN_MAX:
        warnings.append(f"{source}: RNA declared {units} but its largest value is {top:g}; it looks "
                        f"log-transformed (declare --rna-units log2{'fpkm' if units == 'fpkm' else 'tpm'} if so)")
    if log and (pseudocount != 1 or (values < floor).any()):
        linear = np.clip(np.exp2(values) - pseudocount, 0.0, None)  # rounding below 0 is clipped
        mat = pd.DataFrame(np.log2(linear + 1.0), index=mat.index, columns=mat.columns)
    return mat


def _check_methylation(mat: pd.DataFrame, values: np.ndarray, units: str, source: str, observed: int,
                       warnings: list[str]) -> pd.DataFrame:
    """Methylation rules (module docstring); the values are returned as beta."""
    if units not in METHYLATION_UNITS:
        raise CohortInputError(f"methylation units must be one of {METHYLATION_UNITS}, got {units!r}")
    if units == "mvalue":
        big = np.abs(values) > M_VALUE_MAX
        if big.any():
            raise CohortInputError(f"{source}: methylation declared M-values but {_count(big, observed)} exceed "
                                   f"|M| = {M_VALUE_MAX:g} ({_first(mat, big)}); these are not M-values")
        if observed and np.nanmin(values) >= 0 and np.nanmax(values) <= 1:
            warnings.append(f"{source}: methylation declared M-values but every value lies in [0, 1]; they look "
                            "like beta values (declare --methylation-units beta if so)")
        return 1.0 / (1.0 + np.exp2(-mat))  # beta = 2^M / (1 + 2^M)
    hi = 100.0 if units == "percent" else 1.0
    tol = BETA_TOLERANCE * hi
    out = (values < -tol) | (values > hi + tol)
    if out.any():
        hint = "give beta values (0-1)"
        if units == "beta":
            lo_v, hi_v = np.nanmin(values), np.nanmax(values)
            if lo_v >= -tol and hi_v <= 100 + 100 * tol:
                hint = "they look like percent (0-100): declare --methylation-units percent to divide by 100"
            elif lo_v >= -0.5 - tol and hi_v <= 0.5 + tol:
                hint = ("they lie in [-0.5, 0.5] and look like centred beta values (beta - 0.5): add 0.5 to give "
                        "beta values (0-1)")
            elif np.nanmax(np.abs(values)) <= M_VALUE_MAX:
                hint = "they look like M-values (log2 ratios): declare --methylation-units mvalue to convert them"
        raise CohortInputError(f"{source}: methylation declared {units} (0-{hi:g}) but {_count(out, observed)} "
                               f"are outside it ({_first(mat, out)}); {hint}")
    mat = mat.clip(lower=0.0, upper=hi)  # rounding within the tolerance
    return mat / 100.0 if units == "percent" else mat


DISCRETE = ("snp", "cnv")  # duplicates expected: genes mutated in the same patients, genes of one segment


def feature_notes(mat: pd.DataFrame, modality: str, source: str, limit: int = 5) -> tuple[list[str], list[str]]:
    """Notes naming constant and duplicate feature columns of ``mat`` (patients x features).

    A constant feature has one observed value (or none) over every patient; a duplicate has the
    same values (missing in the same places) as an earlier column. Both are kept; they carry no
    signal of their own. Duplicates of discrete modalities (``DISCRETE``) are expected and are
    reported, not warned about.

    Args:
        mat: the aligned values.
        modality: named in the messages.
        source: the file, named in the messages.
        limit: how many example names a message lists.

    Returns:
        ``(warnings, report-only notes)``.
    """
    if mat.shape[1] == 0 or len(mat) < 2:
        return [], []
    values = mat.to_numpy(np.float64)  # [n, F]
    notes, info = [], []
    lo, hi = np.fmin.reduce(values, axis=0), np.fmax.reduce(values, axis=0)  # NaN ignored; NaN if all are
    constant = ~(hi > lo)  # all-NaN columns too
    if constant.any():
        names = [str(c) for c in mat.columns[constant][:limit]]
        n = int(constant.sum())
        notes.append(f"{modality} ({source}): {n} constant feature{'s' if n > 1 else ''} of {mat.shape[1]} (one value, "
                     f"or none, over all {len(mat)} patients: {', '.join(names)}{', ...' if n > limit else ''})")
    dup_of = _duplicate_columns(values, ~constant)
    dup = sorted(dup_of)
    if len(dup):
        pairs = [f"{mat.columns[j]} = {mat.columns[dup_of[j]]}" for j in dup[:limit]]
        n = len(dup)
        why = {"cnv": "; neighbouring genes in one copy-number segment share their calls",
               "snp": "; genes mutated in exactly the same patients"}.get(modality, "")
        (info if modality in DISCRETE else notes).append(
            f"{modality} ({source}): {n} feature{'s duplicate' if n > 1 else ' duplicates'} another (same values for "
            f"every patient: {', '.join(pairs)}{', ...' if n > limit else ''}){why}")
    return notes, info


def _duplicate_columns(values: np.ndarray, among: np.ndarray) -> dict[int, int]:
    """``{column: the earlier column it equals}`` (NaN in the same places) among the ``among`` columns.

    Columns are bucketed by a random projection (missing values counted as 0), then the
    columns of a bucket are compared exactly, so the cost is about one matrix product.
    """
    r = np.random.default_rng(0).standard_normal(values.shape[0])
    h = r @ values  # [F]; NaN where a column has missing values
    gaps = np.flatnonzero(np.isnan(h))
    if len(gaps):
        part = values[:, gaps]
        h[gaps] = r @ np.where(np.isnan(part), 0.0, part)
    idx = np.flatnonzero(among)
    order = idx[np.argsort(h[idx], kind="stable")]
    hs = h[order]
    tol = 1e-9 * max(1.0, float(np.abs(hs).max())) if len(hs) else 0.0
    starts = np.flatnonzero(np.diff(hs) > tol) + 1
    dup_of: dict[int, int] = {}
    for group in np.split(order, starts):
        if len(group) < 2:
            continue
        leaders: list[int] = []
        for j in sorted(group.tolist()):
            match = next((a for a in leaders if np.array_equal(values[:, j], values[:, a], equal_nan=True)), None)
            if match is None:
                leaders.append(j)
            else:
                dup_of[j] = match
    return dup_of
