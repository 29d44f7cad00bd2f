"""What a benchmark task is scored on, per patient: each modality's embedding and the multimodal one.

A :class:`Representation` gives, for a list of patients, one row of features each, computed with
statistics of the training patients only (``featurize(ids, train_ids)``), so that fitted
features (the baselines of :mod:`.baselines`, the fused representation) never see the test part.

The **multimodal representation** (``<model>:fused``) of a patient is the concatenation of one
block per modality (a patient's slides averaged), each block standardised with the training
patients' mean and standard deviation, a missing modality being 0, the training mean
(:func:`pathalign.evaluate.missing.fused_matrix`, the representation the ``--missing-rates``
section hides modalities from). Why not the mean of the l2-normalised embeddings: the modalities'
embeddings do not share one space (the alignment lives in the pair adapters W_ij, not in the
encoders' outputs) and need not have one size (a slide embedding concatenates two means), so
averaging them would add unrelated coordinates; concatenated standardised blocks let the probe
weigh each modality, and mean imputation makes an absent modality uninformative rather than a
made-up value.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ..modalities import MODALITIES
from .missing import fused_matrix, patient_blocks

FUSED = "fused"
MODALITY_CHOICES = (*MODALITIES, FUSED)


@dataclass
class Representation:
    """Per-patient features of one kind.

    Args:
        name: row label in the results (``<model>:rna``, ``<model>:fused``, ``raw:rna``, ``pca:rna``).
        kind: ``model``, ``raw`` or ``pca``.
        modality: the modality (or ``fused``).
        patients: the patients that have it.
        featurize: ``(ids, train_ids) -> float [len(ids), d]``, fitted on ``train_ids`` only.
        note: how the features are made (written into the results).
    """

    name: str
    kind: str
    modality: str
    patients: list[str]
    featurize: Callable[[Sequence[str], Sequence[str]], np.ndarray]
    note: str = ""


def embedding_modalities(emb: dict) -> list[str]:
    """The modalities an embeddings file (as :func:`read_embeddings` returns it) holds, in the usual order."""
    return [m for m in MODALITIES if m in emb and len(emb[m].get("ids", [])) > 0]


def choose_modalities(emb: dict, wanted: Sequence[str] | None) -> list[str]:
    """The representations to score for one model: ``wanted`` (``all`` = every modality it has, plus ``fused``)
    restricted to what the embeddings hold; ``fused`` needs one modality at least."""
    have = embedding_modalities(emb)
    wanted = list(wanted) if wanted else ["all"]
    out = []
    for m in wanted:
        out += [*have, FUSED] if m == "all" else [m]
    out = [m for m in dict.fromkeys(out) if m in have or (m == FUSED and have)]
    return out


def model_representations(name: str, emb: dict, modalities: Sequence[str]) -> list[Representation]:
    """One representation per molecular modality in ``modalities`` (the slide one is scored per slide by the
    bench itself) and the fused one over every embedded modality of ``modalities`` when ``fused`` is listed.

    Args:
        name: the model's name (row prefix).
        emb: the embeddings (:func:`pathalign.io.embeddings.read_embeddings`).
        modalities: modalities to score (see :func:`choose_modalities`).

    Returns:
        The representations.
    """
    have = embedding_modalities(emb)
    parts = [m for m in modalities if m in have] or have
    blocks = patient_blocks(emb, parts)
    out = []
    for m in modalities:
        if m == FUSED or m == "wsi" or m not in blocks:
            continue
        table = blocks[m]
        out.append(Representation(f"{name}:{m}", "model", m, list(table),
                                  lambda ids, train, t=table: np.stack([t[p] for p in ids]),
                                  f"the model's {m} embedding"))
    if FUSED in modalities and blocks:
        patients = list(dict.fromkeys(p for b in blocks.values() for p in b))
        out.append(Representation(f"{name}:{FUSED}", "model", FUSED, patients,
                                  lambda ids, train: fused_matrix(blocks, list(ids), list(train)),
                                  "concatenation of the " + "+".join(blocks) + " embeddings, each standardised on "
                                  "the training patients, a missing modality at the training mean (0)"))
    return out
