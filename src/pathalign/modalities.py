"""The modalities pathalign aligns: one definition, used by cohort build, the model and the ablations."""
from __future__ import annotations

from collections.abc import Iterable

WSI = "wsi"
MOLECULAR: tuple[str, ...] = ("rna", "snp", "cnv", "methylation")
"""Molecular layers, in the order cohort folders, models and reports list them."""
MODALITIES: tuple[str, ...] = (WSI,) + MOLECULAR
"""Every modality: the slide first, then the molecular layers."""


def check_modalities(names: Iterable[str], where: str = "modalities") -> list[str]:
    """``names`` as a list, or a ``ValueError`` naming those that are not modalities.

    Example:
        >>> check_modalities(["wsi", "rna"])
        ['wsi', 'rna']
    """
    names = list(names)
    unknown = [m for m in names if m not in MODALITIES]
    if unknown:
        raise ValueError(f"{where}: unknown modalities {unknown}; known: {', '.join(MODALITIES)}")
    return names
