"""Sample id → patient id rules, and the choice among several samples of one patient.

``tcga``: the patient is the first 12 characters of the barcode (``TCGA-XX-YYYY``); only
tumour samples are kept (sample type ``01``–``09``, characters 14–15); when a patient has
several tumour samples the first in (sample type, vial, portion, full barcode) order is
kept — e.g. ``-01A`` before ``-01B``, primary (01) before recurrence (02) — and the others are
reported as dropped duplicates.

``table``: a two-column mapping (``sample_id``, ``case_id``) read from a file; every sample
listed maps to its patient; unlisted samples are dropped and reported.

Patient ids are compared after one normalisation, the same for every source (clinical
table, slides table, sample-derived ids): surrounding blanks removed, Unicode normalised to
NFC (a file name written on macOS arrives decomposed, NFD, and would otherwise differ from the
same name typed elsewhere) and, under the ``tcga`` rule, upper case (TCGA barcodes are
case-insensitive) with R's dotted spelling read as dashes (``TCGA.KL.8323.01A`` — R's
``make.names`` writes barcodes so — is ``TCGA-KL-8323-01A``). Under ``table`` ids are compared
as written (stripped, NFC).
"""
from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ..io.cohort_folder import CohortInputError

TCGA_PATIENT = re.compile(r"^[A-Z0-9]+-[A-Z0-9]{2}-[A-Z0-9]{4}", re.IGNORECASE)
TCGA_SAMPLE = re.compile(r"^([A-Z0-9]+-[A-Z0-9]{2}-[A-Z0-9]{4})-(\d{2})([A-Z]?)(?:-(\d{2})([A-Z]?))?", re.IGNORECASE)
TCGA_DOTTED = re.compile(r"^[A-Z0-9]+\.[A-Z0-9]{2}\.[A-Z0-9]{4}(?:\.[A-Z0-9]+)*$", re.IGNORECASE)


def clean_id(value: object) -> str:
    """An id as written, stripped and Unicode-normalised (NFC)."""
    return unicodedata.normalize("NFC", str(value).strip())


def tcga_barcode(value: object) -> str:
    """A barcode in TCGA's dashed spelling: stripped, NFC, R's dots (``TCGA.KL.8323``) read as dashes."""
    value = clean_id(value)
    return value.replace(".", "-") if TCGA_DOTTED.match(value) else value


@dataclass
class Drop:
    """A sample left out, and why."""

    source: str
    sample: str
    reason: str


@dataclass
class IdRule:
    """Maps sample ids to patient ids; ``kind`` is ``tcga`` or ``table``."""

    kind: str = "tcga"
    table: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_args(cls, kind: str, table_path: str | None) -> "IdRule":
        if kind == "tcga":
            return cls("tcga")
        if kind != "table":
            raise CohortInputError(f"unknown id rule {kind!r} (tcga or table)")
        if not table_path:
            raise CohortInputError("--id-rule table needs --id-map FILE (columns sample_id, case_id)")
        df = pd.read_csv(table_path, sep=None, engine="python", dtype=str)
        missing = {"sample_id", "case_id"} - set(df.columns)
        if missing:
            raise CohortInputError(f"{table_path}: id map lacks column(s) {sorted(missing)}")
        return cls("table", dict(zip(df.sample_id.map(clean_id), df.case_id.map(clean_id))))

    def normalise_case(self, case_id: object) -> str:
        """The patient id as every source is compared by (see module docstring)."""
        return tcga_barcode(case_id).upper() if self.kind == "tcga" else clean_id(case_id)

    def looks_like_sample(self, value: str) -> bool:
        """Whether ``value`` is a sample id under this rule (used to find the id axis of a matrix)."""
        if self.kind == "tcga":
            return bool(TCGA_PATIENT.match(tcga_barcode(value)))
        return clean_id(value) in self.table

    def patient_of(self, sample: str) -> tuple[str | None, str | None]:
        """``(patient id, None)`` or ``(None, reason it is dropped)``."""
        sample = tcga_barcode(sample) if self.kind == "tcga" else clean_id(sample)
        if self.kind == "table":
            return (self.table[sample], None) if sample in self.table else (None, "not in the id map")
        m = TCGA_SAMPLE.match(sample)
        if m is None:
            if TCGA_PATIENT.fullmatch(sample):
                return sample.upper(), None  # a bare patient barcode
            return None, "not a TCGA barcode"
        sample_type = int(m.group(2))
        if not 1 <= sample_type <= 9:
            return None, f"not a tumour sample (sample type {m.group(2)})"
        return m.group(1).upper(), None

    def sort_key(self, sample: str) -> tuple:
        m = TCGA_SAMPLE.match(tcga_barcode(sample)) if self.kind == "tcga" else None
        if m is None:
            return ("", "", "", str(sample))
        return (m.group(2), m.group(3) or "", m.group(4) or "", str(sample))


def assign_patients(samples: list[str], rule: IdRule, source: str) -> tuple[dict[str, str], list[Drop]]:
    """Choose one sample per patient.

    Returns:
        ``{patient: chosen sample}`` and the list of dropped samples with reasons.
    """
    drops: list[Drop] = []
    by_patient: dict[str, list[str]] = {}
    for s in samples:
        patient, why = rule.patient_of(s)
        if patient is None:
            drops.append(Drop(source, str(s), why))
        else:
            by_patient.setdefault(patient, []).append(str(s))
    chosen = {}
    for patient, group in by_patient.items():
        group = sorted(group, key=rule.sort_key)
        chosen[patient] = group[0]
        drops.extend(Drop(source, s, f"duplicate sample of {patient}; kept {group[0]}") for s in group[1:])
    return chosen, drops


def files_by_stem(folder: Path, suffix: str) -> dict[str, str]:
    """``{NFC stem: stem as on disk}`` of the files ``*<suffix>`` in ``folder``.

    A name written on macOS arrives decomposed (NFD) and differs, byte for byte, from the
    same name typed in a table; looking files up by the NFC form finds them.
    """
    out = {}
    for p in folder.glob(f"*{suffix}"):
        stem = p.name[: -len(suffix)]
        out.setdefault(unicodedata.normalize("NFC", stem), stem)
    return out


def source_name(path: str | Path) -> str:
    return Path(path).name
