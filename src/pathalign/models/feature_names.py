"""The feature-name contract between a trained model and the molecular table it is applied to.

A model's preprocessing lists the features it was fitted on (genes, probes). A table whose
names differ (Ensembl version suffixes, ``SYMBOL|ENTREZ`` against ``SYMBOL``, another naming
scheme) would otherwise be imputed with the training mean, feature by feature, without a word:
at 0 % overlap every patient gets the same embedding.

Names are matched exactly first, then after one normalisation applied to both sides, used only
where it is unambiguous (one model feature and one table column per normalised name):

* an Ensembl id loses its version suffix (``ENSG00000141510.17`` → ``ENSG00000141510``);
  ``_PAR_Y`` ids are left as they are (the X and Y copies share the base id);
* a Firehose ``SYMBOL|ENTREZ`` name becomes ``SYMBOL`` (``TP53|7157`` → ``TP53``); ``?|ENTREZ``
  (no symbol) is left as it is.

Below :data:`MIN_OVERLAP` of the model's features present, inference is refused
(:class:`FeatureOverlapError` naming the modality, the overlap ``n of m``, example missing names
and a hint); above it, a partial overlap is a warning and the caller records the imputed fraction.
"""
from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import pandas as pd

from ..errors import PathalignError

MIN_OVERLAP = 0.5  # fraction of the model's features that must be present in the table
ENSEMBL_VERSIONED = re.compile(r"^(ENS[A-Z]*[GTPE]\d{6,})\.\d+$")
SYMBOL_ENTREZ = re.compile(r"^([^|]+)\|(\d+)$")
DOT_NUMBER = re.compile(r"^(.+)\.\d+$")


class FeatureOverlapError(PathalignError, ValueError):
    """Too few of the model's features are in the table; the message names the modality and the overlap."""


def normalise_feature_name(name: str) -> str:
    """The name compared across naming variants (see the module docstring).

    Args:
        name: a feature name as written in a table or a model's preprocessing.

    Returns:
        ``name`` stripped, without an Ensembl version suffix, ``SYMBOL|ENTREZ`` as ``SYMBOL``.

    Example:
        >>> normalise_feature_name("ENSG00000141510.17"), normalise_feature_name("TP53|7157")
        ('ENSG00000141510', 'TP53')
    """
    name = str(name).strip()
    m = ENSEMBL_VERSIONED.match(name)
    if m:
        return m.group(1)
    m = SYMBOL_ENTREZ.match(name)
    if m and m.group(1) != "?":
        return m.group(1)
    return name


@dataclass
class FeatureOverlap:
    """How the model's features were found in a table.

    Args:
        modality: the modality.
        n_model: features the model was fitted on.
        columns: model feature → table column, for those found.
        missing: model features not found, in the model's order.
    """

    modality: str
    n_model: int
    columns: dict[str, str] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)

    @property
    def n_present(self) -> int:
        return len(self.columns)

    @property
    def fraction(self) -> float:
        return self.n_present / max(1, self.n_model)

    @property
    def n_renamed(self) -> int:
        """Features found only after normalising names."""
        return sum(f != c for f, c in self.columns.items())

    def describe(self) -> str:
        return f"{self.n_present} of {self.n_model} ({self.fraction:.0%})"


def match_features(features: Sequence[str], columns: Iterable[str], modality: str = "") -> FeatureOverlap:
    """Find each model feature among ``columns``: the same name, else the same normalised name when unambiguous.

    Args:
        features: the model's features (its preprocessing's ``features``).
        columns: the table's column names.
        modality: for messages.

    Returns:
        The :class:`FeatureOverlap`.
    """
    cols = [str(c) for c in columns]
    exact = set(cols)
    by_norm: dict[str, list[str]] = {}
    for c in cols:
        by_norm.setdefault(normalise_feature_name(c), []).append(c)
    model_norm = Counter(normalise_feature_name(f) for f in features)
    known = set(map(str, features))
    out = FeatureOverlap(modality, len(features))
    for f in features:
        f = str(f)
        if f in exact:
            out.columns[f] = f
            continue
        key = normalise_feature_name(f)
        cands = by_norm.get(key, [])
        if len(cands) == 1 and model_norm[key] == 1 and cands[0] not in known:
            out.columns[f] = cands[0]
        else:
            out.missing.append(f)
    return out


def _kind(name: str) -> str:
    if name.startswith("ENS"):
        return "Ensembl ids" + (" with version suffixes" if ENSEMBL_VERSIONED.match(name) else "")
    if SYMBOL_ENTREZ.match(name):
        return "Firehose SYMBOL|ENTREZ names"
    if re.match(r"^c[gh]\d{8}$", name):
        return "Illumina probe ids"
    if DOT_NUMBER.match(name):
        return "names with a '.N' suffix"
    return "symbols"


def naming_hint(missing: Sequence[str], columns: Sequence[str]) -> str:
    """A hint on why names differ, from examples on each side (model features missing, table columns)."""
    model_kinds = Counter(_kind(str(f)) for f in list(missing)[:200]).most_common(1)
    table_kinds = Counter(_kind(str(c)) for c in list(columns)[:200]).most_common(1)
    mk = model_kinds[0][0] if model_kinds else "?"
    tk = table_kinds[0][0] if table_kinds else "?"
    hint = f"the model's names look like {mk}, the table's like {tk}"
    if mk != tk:
        hint += "; map the table's names to the model's (e.g. with a gene annotation) and rebuild the cohort"
    elif tk == "names with a '.N' suffix":
        hint += " (a '.1' suffix is what pandas or R's make.unique add to repeated names)"
    hint += (". Ensembl version suffixes and SYMBOL|ENTREZ are matched automatically; symbols vs Ensembl ids, "
             "renamed genes and other suffixes are not")
    return hint


def check_overlap(overlap: FeatureOverlap, columns: Sequence[str], where: str,
                  min_fraction: float = MIN_OVERLAP) -> str | None:
    """Refuse an overlap below ``min_fraction``; otherwise the warning for a partial one (None when full).

    Args:
        overlap: from :func:`match_features`.
        columns: the table's columns (for the hint).
        where: the table or cohort, for messages.
        min_fraction: the threshold.

    Returns:
        A warning line when some features are missing, else None.

    Raises:
        FeatureOverlapError: fewer than ``min_fraction`` of the model's features present.
    """
    m = overlap.modality
    examples = ", ".join(overlap.missing[:3])
    if overlap.n_model and overlap.fraction < min_fraction:
        have = ", ".join(list(map(str, columns))[:3])
        raise FeatureOverlapError(
            f"{where}: only {overlap.describe()} of the model's {m} features are in the cohort's {m} table "
            f"(at least {min_fraction:.0%} needed); missing e.g. {examples}; the table has e.g. {have}. "
            f"Hint: {naming_hint(overlap.missing, columns)}")
    if overlap.missing:
        return (f"{where}: {overlap.describe()} of the model's {m} features are in the cohort's {m} table; the "
                f"{len(overlap.missing)} missing (e.g. {examples}) are imputed with the training mean "
                f"(imputed fraction per patient recorded)")
    return None


def align_table(table: pd.DataFrame, features: Sequence[str], modality: str, where: str,
                min_fraction: float = MIN_OVERLAP) -> tuple[pd.DataFrame, FeatureOverlap, str | None]:
    """``table`` with the columns matched to the model's features renamed to the model's names.

    The other columns are kept as they are (a transform may normalise over all of them, e.g. FPKM → TPM).

    Args:
        table: patients x features raw table.
        features: the model's features of ``modality``.
        modality: the modality.
        where: the table or cohort, for messages.
        min_fraction: refuse below this fraction of features present.

    Returns:
        ``(table with renamed columns, overlap, warning or None)``.

    Raises:
        FeatureOverlapError: as :func:`check_overlap`.
    """
    overlap = match_features(features, table.columns, modality)
    warning = check_overlap(overlap, list(table.columns), where, min_fraction)
    rename = {c: f for f, c in overlap.columns.items() if f != c}
    if rename:
        table = table.rename(columns=lambda c: rename.get(str(c), c))
    return table, overlap, warning
