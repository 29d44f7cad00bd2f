"""Value rules of ``cohort build``: what each declared unit allows, and samples with no values.

Each rule either stops the build with a :class:`CohortInputError` naming the file, the count
and a first offending sample/feature, or returns a named warning for the report. The rules
(docs/cohort.md) are:

* any modality: ``inf`` values are an error; a sample whose values are all missing (NaN)
  does not count as present (dropped and reported);
* RNA (``tpm``, ``fpkm``, ``counts``, ``log2tpm``, ``log2fpkm`` — the log units are
  log2(x+1)): a negative value is an error; log units with values above 25 (2^25 TPM cannot
  occur) are an error (linear values declared as log); linear units whose largest value is
  below 30 get a warning (they look log-transformed);
* methylation: declared ``beta`` must lie in [0, 1]; values in [0, 100] are recognised as
  percent and are an error unless ``percent`` is declared, which divides them by 100;
  anything else outside the range (e.g. M-values) is an error;
* CNV: declared ``gistic`` must be the thresholded calls -2, -1, 0, 1, 2; ``log2`` ratios
  are any finite number.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from .ids import CohortInputError, Drop

METHYLATION_UNITS = ("beta", "percent")
LOG_RNA_MAX = 25.0  # log2(TPM + 1) of 1e6 TPM is ~20
LINEAR_RNA_MIN_MAX = 30.0


def drop_empty_samples(mat: pd.DataFrame, source: str, drops: list[Drop]) -> pd.DataFrame:
    """Rows (samples) whose values are all NaN removed and reported in ``drops``."""
    empty = mat.isna().all(axis=1).to_numpy() if mat.shape[1] else np.ones(len(mat), bool)
    drops.extend(Drop(source, str(s), "all values missing (NaN); not counted as present") for s in mat.index[empty])
    return mat[~empty]


def _first(mat: pd.DataFrame, bad: np.ndarray) -> str:
    r, c = np.argwhere(bad)[0]
    return f"first at sample '{mat.index[r]}', feature '{mat.columns[c]}': {float(mat.iat[r, c]):g}"


def _count(bad: np.ndarray, observed: int) -> str:
    n = int(bad.sum())
    return f"{n} of {observed} observed values ({n / max(observed, 1):.1%})"


def check_values(mat: pd.DataFrame, modality: str, units: str, source: str) -> tuple[pd.DataFrame, list[str]]:
    """Check ``mat`` (samples x features) against the rules of ``modality`` in ``units``.

    Args:
        mat: raw values as read.
        modality: ``rna``, ``cnv``, ``methylation`` or ``snp``.
        units: the declared units (RNA units, CNV kind, methylation units).
        source: file name used in messages.

    Returns:
        The values in the cohort's units (methylation percent → beta) and the warnings.

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
            neg = values < 0
            if neg.any():
                raise CohortInputError(
                    f"{source}: {_count(neg, observed)} are negative, which RNA in {units} cannot be "
                    f"({_first(mat, neg)}); give TPM, FPKM, counts or log2(x+1), not z-scores or log ratios")
            top = np.nanmax(values) if observed else 0.0
            if units.startswith("log2") and top > LOG_RNA_MAX:
                big = values > LOG_RNA_MAX
                raise CohortInputError(
                    f"{source}: declared {units} (log2(x+1)) but {_count(big, observed)} exceed {LOG_RNA_MAX:g} "
                    f"(max {top:g}; {_first(mat, big)}); these look linear: declare --rna-units "
                    f"{units.removeprefix('log2')}")
            if not units.startswith("log2") and observed and top < LINEAR_RNA_MIN_MAX:
                warnings.append(f"{source}: RNA declared {units} but its largest value is {top:g}; it looks "
                                f"log-transformed (declare --rna-units log2{'fpkm' if units == 'fpkm' else 'tpm'} if so)")
        elif modality == "methylation":
            if units not in METHYLATION_UNITS:
                raise CohortInputError(f"methylation units must be one of {METHYLATION_UNITS}, got {units!r}")
            hi = 100.0 if units == "percent" else 1.0
            out = (values < 0) | (values > hi)
            if out.any():
                pct = units == "beta" and not ((values < 0) | (values > 100)).any()
                hint = ("they look like percent (0-100): declare --methylation-units percent to divide by 100"
                        if pct else "give beta values (0-1), not M-values")
                raise CohortInputError(f"{source}: methylation declared {units} (0-{hi:g}) but {_count(out, observed)} "
                                       f"are outside it ({_first(mat, out)}); {hint}")
            if units == "percent":
                mat = mat / 100.0
        elif modality == "cnv" and units == "gistic":
            bad = np.isfinite(values) & ~np.isin(values, (-2.0, -1.0, 0.0, 1.0, 2.0))
            if bad.any():
                raise CohortInputError(
                    f"{source}: declared GISTIC thresholded calls (-2..2) but {_count(bad, observed)} are not one of "
                    f"-2, -1, 0, 1, 2 ({_first(mat, bad)}); for log2 ratios declare --cnv-kind log2")
    return mat, warnings
