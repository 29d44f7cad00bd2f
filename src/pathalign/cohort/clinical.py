"""Clinical tables as GDC, Xena, cBioPortal and R write them, read into typed columns.

:func:`read_clinical_table` does four things, and says what it did (``ClinicalTable``, shown
in ``report.md``):

* **Header rows.** cBioPortal ``data_clinical_*.txt`` files start with ``#`` metadata rows
  (display names, descriptions, data types, priorities) above the real header: they are
  skipped. GDC BCR Biotab files (``nationwidechildrens.org_clinical_patient_*.txt``)
  carry two rows under the header: the columns' alternative names and their CDE ids
  (``CDE_ID:2673794``). Leading rows where at least half of the filled cells start with
  ``CDE_ID:``, or that repeat the header (the id cell holds a column name, such as
  ``bcr_patient_barcode``, or half of the cells equal their column's name), are dropped.
* **Missing values.** A cell equal, ignoring case and surrounding blanks, to one of
  :data:`MISSING_MARKERS` is missing (NaN), never a class: Biotab's bracketed markers,
  GDC's ``--`` / ``'--`` (the portal's TSV and Excel's quoted form) and ``not reported``,
  the ``unknown`` of GDC's enumerations, and the R/pandas/Xena spellings of NA. What was read
  as missing is counted per column.
* **Numbers.** A column whose filled cells all parse as numbers is stored as float (as
  int when every cell is filled with a whole number; ``True``/``False`` columns as bool). A
  decimal comma (``0,7886``, European spreadsheets) is detected per column: a column whose
  cells are numbers once the comma is read as a decimal mark is parsed so, unless every
  comma could be a thousands separator (``1,234``): such a column is kept as text with a
  warning naming it, and ``decimal="comma"`` (``--decimal comma``) reads it. ``decimal="point"``
  turns the detection off.
* **Survival times.** In survival-time columns (:data:`SURVIVAL_TIME`: ``<task>_days`` beside
  ``<task>_event``, ``OS.time``, ``days_to_death``, ``death_days_to``, ``days_to_last_followup``,
  ``times`` ...) a negative time is read as missing (so survival tasks leave the patient out)
  and listed by patient and column with its value; missing times are listed too.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .ids import TCGA_SAMPLE, CohortInputError, Drop, IdRule, assign_patients, source_name, tcga_barcode
from .readers import read_table

MISSING_MARKERS = frozenset({
    # GDC BCR Biotab
    "[Not Available]", "[Not Applicable]", "[Unknown]", "[Discrepancy]", "[Not Evaluated]", "[Not Reported]",
    # GDC portal TSV (and Excel's quoted form), GDC dictionary terms
    "--", "'--", "not reported", "Not Reported", "unknown", "Unknown", "not allowed to collect",
    # R, pandas, Xena, spreadsheets
    "NA", "N/A", "n/a", "NaN", "nan", "-nan", "NULL", "null", "None", "#N/A", "<NA>", "",
})
_MISSING_LOWER = frozenset(m.lower() for m in MISSING_MARKERS)
DECIMALS = ("auto", "point", "comma")
SURVIVAL_TIME = re.compile(
    r"^(?:(?:os|pfs|dss|dfs|dfi|pfi|efs|rfs|ttp|overall_survival)[._ ]?(?:time|days|months)|"
    r"days_to_(?:death|last_follow_?up|last_contact|last_known_alive)|"
    r"(?:death|last_contact|last_followup)_days_to|times?|survival_?time)$", re.IGNORECASE)
_NUMBER = re.compile(r"^[+-]?(?:(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|inf|infinity)$", re.IGNORECASE)
_COMMA_NUMBER = re.compile(r"^[+-]?(?:\d+,?\d*|,\d+)(?:[eE][+-]?\d+)?$")
_THOUSANDS = re.compile(r"^[+-]?[1-9]\d{0,2}(?:,\d{3})+$")
MAX_HEADER_ROWS = 3
MAX_LISTED_MISSING = 20


@dataclass
class ClinicalTable:
    """A clinical table read, and what reading it did.

    Attributes:
        frame: one row per patient, ``case_id`` (normalised by the id rule) as index and
            column, the other columns as read (numbers as float, missing as NaN).
        source: the file name.
        header_rows: the dropped rows under the header, each as its first cells.
        missing: column -> Counter of the markers read as missing there.
        comma_columns: columns read with a decimal comma.
        survival: ``(patient, column, value)`` for every negative (value as written) or
            missing (``"missing"``) survival time; negatives were set to missing.
        warnings: named warnings for the report.
        dropped: rows left out of a sample-level table (another sample of the patient, a normal).
    """

    frame: pd.DataFrame
    source: str
    header_rows: list[str] = field(default_factory=list)
    missing: dict[str, Counter] = field(default_factory=dict)
    comma_columns: list[str] = field(default_factory=list)
    survival: list[tuple[str, str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    dropped: list[Drop] = field(default_factory=list)


def _header_like(row: pd.Series, columns: list[str], case_col: str) -> bool:
    cells = [str(v).strip() for v in row.to_numpy()]
    filled = [c for c in cells if c]
    if not filled:
        return False
    if sum(c.upper().startswith("CDE_ID:") for c in filled) >= 0.5 * len(filled):
        return True
    if str(row[case_col]).strip().lower() in {c.lower() for c in columns}:
        return True
    return sum(c.lower() == str(n).strip().lower() for c, n in zip(cells, columns)) >= 0.5 * len(columns)


def _cbioportal_header(df: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """cBioPortal's ``data_clinical_*.txt``: ``#`` metadata rows (names, descriptions, types, priority) first."""
    if not len(df.columns) or not str(df.columns[0]).startswith("#"):
        return df, []
    first = df.iloc[:, 0].astype(str)
    real = int(np.argmax(~first.str.startswith("#").to_numpy())) if len(df) else 0
    if real >= len(df) or first.iat[real].startswith("#"):
        return df, []
    meta = [" | ".join(map(str, df.columns[:3]))] + [" | ".join(str(v) for v in df.iloc[i, :3]) for i in range(real)]
    body = df.iloc[real + 1:].reset_index(drop=True)
    body.columns = [str(v).strip() for v in df.iloc[real]]
    return body, meta


def _case_col_hint(df: pd.DataFrame, rule: IdRule) -> str:
    """``; give --case-col X`` naming columns whose values look like ids under ``rule``."""
    candidates = [str(c) for c in df.columns
                  if len(df) and np.mean([rule.looks_like_sample(v) for v in df[c].astype(str)[:200]]) >= 0.5]
    return f"; the ids look to be in {', '.join(repr(c) for c in candidates[:3])}: give --case-col" if candidates else ""


def _drop_header_rows(df: pd.DataFrame, case_col: str) -> tuple[pd.DataFrame, list[str]]:
    n = 0
    while n < min(MAX_HEADER_ROWS, len(df)) and _header_like(df.iloc[n], list(df.columns), case_col):
        n += 1
    dropped = [" | ".join(str(v) for v in df.iloc[i, :3]) for i in range(n)]
    return df.iloc[n:].reset_index(drop=True), dropped


def _is_missing(values: pd.Series) -> np.ndarray:
    return values.isna().to_numpy() | values.astype(str).str.strip().str.lower().isin(_MISSING_LOWER).to_numpy()


def _parse_numbers(cells: pd.Series, decimal: str) -> tuple[pd.Series | None, bool, bool]:
    """``(floats or None, read with a decimal comma, ambiguous comma)`` for the filled ``cells``."""
    text = cells.astype(str).str.strip()
    if text.str.match(_NUMBER).all():
        return pd.to_numeric(text), False, False
    if decimal == "point" or not text.str.match(_COMMA_NUMBER).all():
        return None, False, False
    with_comma = text[text.str.contains(",", regex=False)]
    if decimal == "auto" and with_comma.str.match(_THOUSANDS).all():
        return None, False, True
    return pd.to_numeric(text.str.replace(",", ".", regex=False)), True, False


def _survival_columns(columns: list[str]) -> list[str]:
    names = set(columns)
    return [c for c in columns if SURVIVAL_TIME.match(str(c))
            or (str(c).endswith("_days") and f"{str(c)[:-5]}_event" in names)]


def read_clinical_table(path: str | Path, case_col: str, rule: IdRule, decimal: str = "auto") -> ClinicalTable:
    """Read a clinical table: header rows dropped, missing markers as NaN, numbers as float.

    Args:
        path: TSV/CSV/Parquet (``.gz`` allowed).
        case_col: the patient id column.
        rule: the id rule, which normalises the patient ids.
        decimal: ``auto`` (decimal comma detected per column), ``point`` or ``comma``.

    Returns:
        The table and what was done to it (module docstring).

    Raises:
        CohortInputError: no ``case_col``, a row without an id, or a patient listed twice.
    """
    if decimal not in DECIMALS:
        raise CohortInputError(f"--decimal must be one of {DECIMALS}, got {decimal!r}")
    path = Path(path)
    name = source_name(path)
    df = read_table(path, text=True)  # every cell as written; Parquet columns as stored
    df, meta_rows = _cbioportal_header(df)
    if case_col not in df.columns:
        raise CohortInputError(f"{path}: no '{case_col}' column (columns: {list(df.columns)[:8]})"
                               + _case_col_hint(df, rule))
    df, header_rows = _drop_header_rows(df, case_col)
    skipped = len(header_rows) + len(meta_rows)
    out = ClinicalTable(df, name, meta_rows + header_rows)
    ids = df[case_col]
    blank = ids.isna().to_numpy() | (ids.astype(str).str.strip() == "").to_numpy()
    if blank.any():
        raise CohortInputError(f"{path}: row {int(np.flatnonzero(blank)[0]) + 2 + skipped} has no '{case_col}'")
    columns: dict[str, pd.Series] = {}
    for col in df.columns:
        values = df[col]
        if col == case_col or pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
            columns[col] = values
            continue
        miss = _is_missing(values)
        if miss.any():
            out.missing[col] = Counter("(empty)" if pd.isna(v) or not str(v).strip() else str(v).strip()
                                       for v in values[miss])
        values = values.where(~miss, np.nan)
        filled = values[~miss]
        if len(filled) and not miss.any() and filled.str.strip().str.lower().isin(("true", "false")).all():
            values = filled.str.strip().str.lower() == "true"
        elif len(filled):
            parsed, comma, ambiguous = _parse_numbers(filled, decimal)
            if parsed is not None:
                numbers = parsed.to_numpy(np.float64)
                integral = not miss.any() and not comma and bool(np.all(numbers == np.round(numbers)))
                values = pd.Series(np.nan, index=values.index, dtype=np.float64)
                values[~miss] = numbers
                if integral and np.all(np.abs(numbers) < 2**53):
                    values = values.astype(np.int64)  # whole numbers, none missing: as pandas reads them
                if comma:
                    out.comma_columns.append(str(col))
            elif ambiguous:
                out.warnings.append(f"{name}: column '{col}' holds numbers with a comma that may be a thousands "
                                    f"separator or a decimal mark (e.g. {filled.iat[0]!r}); kept as text: declare "
                                    "--decimal comma to read it as a decimal mark")
        columns[col] = values
    frame = pd.DataFrame(columns, index=df.index)
    if rule.kind == "tcga" and _sample_level(frame[case_col]):
        frame = _to_patient_rows(frame, case_col, rule, out)
    frame[case_col] = frame[case_col].map(rule.normalise_case)
    dup = frame[frame[case_col].duplicated(keep=False)]
    if len(dup):
        rows = ", ".join(str(i + 2 + skipped) for i in dup.index[:6])
        raise CohortInputError(f"{path}: patient {dup[case_col].iat[0]!r} appears more than once (rows {rows})")
    frame = frame.rename(columns={case_col: "case_id"})
    _check_survival(frame, out)
    out.frame = frame.set_index("case_id", drop=False)
    return out


def _sample_level(ids: pd.Series) -> bool:
    """Whether most ids are TCGA sample barcodes (``TCGA-OR-A5J1-01A``) rather than patient barcodes."""
    return bool(len(ids)) and float(np.mean([TCGA_SAMPLE.match(tcga_barcode(v)) is not None for v in ids])) >= 0.5


def _to_patient_rows(frame: pd.DataFrame, case_col: str, rule: IdRule, out: ClinicalTable) -> pd.DataFrame:
    """A sample-level table reduced to one row per patient by the id rule (tumour samples, first vial)."""
    chosen, drops = assign_patients(list(frame[case_col].astype(str)), rule, out.source)
    out.dropped.extend(drops)
    by_sample = {sample: patient for patient, sample in chosen.items()}
    keep = frame[case_col].astype(str).isin(by_sample).to_numpy() & ~frame[case_col].duplicated().to_numpy()
    frame = frame[keep].copy()
    frame[case_col] = frame[case_col].astype(str).map(by_sample)
    out.warnings.append(f"{out.source}: ids in '{case_col}' are sample barcodes; read as one row per patient by the "
                        f"tcga rule ({len(frame)} patients; {len(drops)} rows left out: normals and other samples of "
                        "a patient, listed under dropped samples)")
    return frame


def _check_survival(frame: pd.DataFrame, out: ClinicalTable) -> None:
    """Negative survival times set to missing; negatives and missing times listed (``out.survival``)."""
    for col in _survival_columns([c for c in frame.columns if c != "case_id"]):
        values = frame[col]
        if not pd.api.types.is_numeric_dtype(values):
            continue
        neg = (values < 0).to_numpy()  # -inf too (R writes -Inf for an unknown time)
        for p, v in zip(frame.case_id[neg], values[neg]):
            out.survival.append((str(p), str(col), f"{v:g}"))
        for p in frame.case_id[values.isna().to_numpy()]:
            out.survival.append((str(p), str(col), "missing"))
        if neg.any():
            who = ", ".join(frame.case_id[neg].astype(str)[:5])
            out.warnings.append(f"{out.source}: column '{col}': {int(neg.sum())} negative survival time"
                                f"{'s' if neg.sum() > 1 else ''} ({who}{', ...' if neg.sum() > 5 else ''}) read as "
                                "missing; these patients are left out of survival tasks (listed in report.md)")
            frame[col] = values.mask(neg)


def render_clinical(table: ClinicalTable) -> list[str]:
    """The report.md section on the clinical table (Markdown lines)."""
    lines = ["## Clinical table", "", f"`{table.source}`: {len(table.frame)} patients, "
             f"{table.frame.shape[1] - 1} columns."]
    if table.header_rows:
        lines += ["", f"{len(table.header_rows)} header rows under the column names were recognised (GDC Biotab: "
                  "alternative names, CDE_ID) and dropped: " + "; ".join(f"`{r}`" for r in table.header_rows) + "."]
    numeric = [str(c) for c in table.frame.columns if c != "case_id" and pd.api.types.is_numeric_dtype(table.frame[c])
               and not pd.api.types.is_bool_dtype(table.frame[c])]
    lines += ["", f"Numeric columns ({len(numeric)}): {', '.join(numeric) or 'none'}."]
    if table.comma_columns:
        lines.append(f"Read with a decimal comma: {', '.join(table.comma_columns)}.")
    lines += ["", "### Read as missing", ""]
    if table.missing:
        lines += ["| column | cells | markers |", "|---|---|---|"]
        for col, counts in table.missing.items():
            marks = ", ".join(f"{m} ×{n}" for m, n in counts.most_common())
            lines.append(f"| {col} | {sum(counts.values())} | {marks} |")
    else:
        lines.append("None.")
    lines += ["", "### Survival times", ""]
    if table.survival:
        lines += ["Negative times were read as missing; patients without a time are left out of survival tasks.", "",
                  "| patient | column | value |", "|---|---|---|"]
        shown: Counter = Counter()
        for p, col, v in table.survival:
            if v == "missing":
                shown[col] += 1
                if shown[col] > MAX_LISTED_MISSING:
                    continue
            lines.append(f"| {p} | {col} | {v} |")
        for col, n in shown.items():
            if n > MAX_LISTED_MISSING:
                lines.append(f"| ({n - MAX_LISTED_MISSING} more) | {col} | missing |")
    else:
        cols = _survival_columns([c for c in table.frame.columns if c != "case_id"])
        lines.append(f"No negative or missing time in {', '.join(map(str, cols))}." if cols
                     else "No survival-time column recognised.")
    return lines + [""]
