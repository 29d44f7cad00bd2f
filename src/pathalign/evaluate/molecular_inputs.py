"""A cohort's molecular tables as a trained model's inputs, under the feature-name contract.

Every inference path that feeds raw molecular tables to a trained model (``embed``, ``analyze``)
goes through :func:`molecular_inputs`: the table's columns are matched to the model's features
(:mod:`pathalign.models.feature_names`: refused below the threshold, normalised names, a warning
for a partial overlap), then transformed with the model's fitted preprocessing; the fraction of
the model's features each patient lacks (imputed with the training mean) comes back with them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..models.feature_names import MIN_OVERLAP, FeatureOverlap, align_table

if TYPE_CHECKING:
    from ..cohort import Cohort
    from ..models.pathalign_model import PathAlignModel


@dataclass
class MolecularInputs:
    """One modality's model inputs.

    Args:
        ids: patients with the modality, in the cohort's manifest order.
        x: ``float32 [n, input_dim]`` preprocessed inputs.
        imputed_fraction: ``float32 [n]``, per patient the fraction of the model's features without a value.
        overlap: how the model's features were found in the table.
        warning: the partial-overlap warning, or None.
    """

    ids: list[str]
    x: np.ndarray
    imputed_fraction: np.ndarray
    overlap: FeatureOverlap
    warning: str | None = None


def molecular_inputs(model: PathAlignModel, cohort: Cohort, modality: str, min_fraction: float = MIN_OVERLAP) -> MolecularInputs:
    """``modality``'s table of ``cohort`` preprocessed for ``model``.

    Args:
        model: a trained model (``.transform(modality)`` gives its fitted preprocessing).
        cohort: a loaded cohort (``.matrix``, ``.manifest``, ``.path``).
        modality: a molecular modality both have.
        min_fraction: refuse when fewer of the model's features are in the table.

    Returns:
        The :class:`MolecularInputs`.

    Raises:
        FeatureOverlapError: too few of the model's features in the table (the message names the modality,
            the overlap, examples and a hint).
    """
    tr = model.transform(modality)
    table = cohort.matrix(modality)
    where = str(cohort.path)
    aligned, overlap, warning = align_table(table, tr.features, modality, where, min_fraction)
    present = set(aligned.index)
    ids = [p for p in cohort.manifest.case_id if p in present]
    if ids:
        x = tr.transform(aligned.loc[ids])
        frac = np.asarray(tr.last_imputed_fraction, np.float32)
    else:
        x, frac = np.zeros((0, tr.output_dim), np.float32), np.zeros(0, np.float32)
    return MolecularInputs(ids, x, frac, overlap, warning)
