"""Model presets: the one source of every named :class:`~.pathalign_model.PathAlignModel` set-up.

A preset names a slide-encoder preset (``SLIDE_ENCODER_PRESETS``), the molecular/pair-head sizes
and the training defaults. Input dims are not part of a preset: they come from the data.

Example:
    >>> MODEL_PRESETS.get("tiny").slide_encoder
    'tiny'
    >>> "exaone-path-2.5" in MODEL_PRESETS
    True
    >>> choose_preset(["rna", "methylation"], n_patients=769)
    'molecular'
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..registry import Registry
from .slide_encoder_config import SLIDE_ENCODER_PRESETS

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    import pandas as pd


@dataclass(frozen=True)
class ModelPreset:
    """A named model set-up.

    Attributes:
        description: one line for ``list_models()`` and ``--help``.
        slide_encoder: name in ``SLIDE_ENCODER_PRESETS``.
        embed_dim, proj_dim, mol_depth, dropout, input_noise: :class:`PathAlignConfig` fields.
        train: defaults of :class:`~pathalign.train.trainer.TrainConfig` fields for this size.
    """

    description: str
    slide_encoder: str
    embed_dim: int
    proj_dim: int
    mol_depth: int
    dropout: float
    train: dict = field(default_factory=dict)
    input_noise: float = 0.0

    def __post_init__(self):
        SLIDE_ENCODER_PRESETS.get(self.slide_encoder)

    def model_fields(self) -> dict:
        """The :class:`PathAlignConfig` fields this preset sets."""
        fields = {"slide_encoder": {"preset": self.slide_encoder}, "embed_dim": self.embed_dim,
                  "proj_dim": self.proj_dim, "mol_depth": self.mol_depth, "dropout": self.dropout}
        if self.input_noise:
            fields["input_noise"] = self.input_noise
        return fields


MODEL_PRESETS: Registry[ModelPreset] = Registry("model preset")
MODEL_PRESETS.register("exaone-path-2.5")(ModelPreset(
    "the published EXAONE Path 2.5 architecture (slide encoder dim 768, depth 6, 12 heads, 7 registers)",
    "exaone-path-2.5", embed_dim=768, proj_dim=512, mol_depth=2, dropout=0.1,
    train={"steps": 20000, "batch_size": 64, "lr": 0.0002, "weight_decay": 0.05, "warmup_steps": 1000,
           "max_tokens": 8192, "modality_dropout": 0.1, "checkpoint_every": 1000, "grad_clip": 1.0}))
MODEL_PRESETS.register("small")(ModelPreset(
    "a small model for a workstation GPU or a patient CPU", "small", embed_dim=256, proj_dim=256, mol_depth=2,
    dropout=0.1, train={"steps": 5000, "batch_size": 64, "lr": 0.0005, "weight_decay": 0.05, "warmup_steps": 200,
                        "max_tokens": 4096, "modality_dropout": 0.1, "checkpoint_every": 500, "grad_clip": 1.0}))
MODEL_PRESETS.register("tiny")(ModelPreset(
    "CPU-sized model for the synthetic demo and tests", "tiny", embed_dim=64, proj_dim=64, mol_depth=1, dropout=0.1,
    train={"steps": 300, "batch_size": 32, "lr": 0.002, "weight_decay": 0.05, "warmup_steps": 20,
           "max_tokens": 512, "modality_dropout": 0.0, "checkpoint_every": 100, "grad_clip": 1.0}))
MODEL_PRESETS.register("molecular")(ModelPreset(
    "molecular-only cohorts of hundreds to thousands of patients: linear encoders, dropout 0.3, input noise 0.3, "
    "batch 128 (chosen on TCGA-BRCA RNA + methylation, benchmarks/real_tcga.py)", "tiny", embed_dim=128,
    proj_dim=128, mol_depth=0, dropout=0.3, input_noise=0.3,
    train={"steps": 500, "batch_size": 128, "lr": 0.002, "weight_decay": 0.05, "warmup_steps": 20,
           "max_tokens": 512, "modality_dropout": 0.0, "checkpoint_every": 100, "grad_clip": 1.0}))

AUTO = "auto"
MOLECULAR_MIN_PATIENTS = 200  # the molecular preset's batch of 128 needs this many trainable patients (80 % split)


def choose_preset(modalities: list[str], n_patients: int) -> str:
    """The preset ``--preset auto`` trains: ``molecular`` for a cohort without slides of at least
    ``MOLECULAR_MIN_PATIENTS`` trainable patients, else ``tiny`` (the CPU default).

    Args:
        modalities: the modalities to train (``wsi`` for slides).
        n_patients: patients with at least two of them (the ones training samples).

    Returns:
        A name in ``MODEL_PRESETS``.
    """
    if "wsi" not in modalities and n_patients >= MOLECULAR_MIN_PATIENTS:
        return "molecular"
    return "tiny"


def preset_for_cohort(manifest: pd.DataFrame, modalities: list[str]) -> str:
    """:func:`choose_preset` for a cohort's ``manifest`` (``has_<modality>`` columns) and the modalities to train."""
    cols = [f"has_{m}" for m in modalities if f"has_{m}" in manifest]
    n = int((manifest[cols].sum(axis=1) >= 2).sum()) if cols else 0
    return choose_preset(list(modalities), n)


def resolve_preset(preset: str, cohort: str | Path, modalities: list[str] | None,
                   report: Callable[[str], None] | None = None) -> str:
    """``preset``, or for ``auto`` the one :func:`preset_for_cohort` picks for ``cohort`` (``train`` and ``ablate``).

    Args:
        preset: a preset name or ``auto``.
        cohort: the cohort folder (read only for ``auto``).
        modalities: the modalities to train (default: the cohort's).
        report: called with one line saying what ``auto`` chose (the command line prints it).
    """
    if preset != AUTO:
        return preset
    from ..io.cohort_folder import load_cohort

    co = load_cohort(cohort)
    chosen = preset_for_cohort(co.manifest, modalities or co.modalities)
    if report is not None:
        report(f"--preset auto: {chosen} ({', '.join(modalities or co.modalities)}; {len(co.manifest)} patients)")
    return chosen
