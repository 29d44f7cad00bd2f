"""What a checkpoint was trained on, and the check that a resume continues on the same.

Every checkpoint records the cohort's build id (``cohort.json``; a new id at every
``cohort build``, even from the same files), the modalities and a digest of the fitted
preprocessing. ``train --resume`` against a cohort of another build, or with another set of
modalities, is refused in one line naming both, before any data is read: the saved
preprocessing, splits and weights belong to the old cohort (other values would be trained on
with the old preprocessing; other patients or modalities would not even load).

A checkpoint written before these keys existed is checked by what it does record: its
modalities and that every patient of its splits is in the cohort.
"""
from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING

from ..errors import PathalignError

if TYPE_CHECKING:
    from ..cohort import Cohort

KEYS = ("cohort_build_id", "preprocessing_id", "modalities")


class ResumeMismatch(PathalignError, RuntimeError):
    """A resume on another cohort build or modality set; the message names both."""


def preprocessing_id(preprocessing: dict) -> str:
    """A digest of the fitted preprocessing states (sha256 of their canonical JSON, 16 hex digits)."""
    text = json.dumps(preprocessing, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def run_identity(cohort_meta: dict, modalities: list[str], preprocessing: dict) -> dict:
    """The keys a checkpoint stores about its data (all strings, so ``weights_only`` loading keeps them).

    Args:
        cohort_meta: the cohort's ``cohort.json``.
        modalities: the modalities trained.
        preprocessing: the fitted preprocessing states.
    """
    return {"cohort_build_id": str(cohort_meta.get("build_id") or ""),
            "preprocessing_id": preprocessing_id(preprocessing),
            "modalities": json.dumps(list(modalities))}


def saved_modalities(state: dict) -> list[str] | None:
    """The modalities a checkpoint was trained on (None when it does not say)."""
    if "modalities" in state:
        return json.loads(state["modalities"])
    try:
        return list(json.loads(state["model_config"])["modalities"])
    except (KeyError, TypeError, ValueError):
        return None


def check_resume(state: dict, cohort: Cohort, modalities: list[str], where: str) -> None:
    """Refuse to resume ``state`` on ``cohort`` with ``modalities`` when they are not what it was trained on.

    Args:
        state: the loaded checkpoint.
        cohort: the cohort given now (``.meta``, ``.manifest``, ``.path``).
        modalities: the modalities this run would train.
        where: the checkpoint file, for messages.

    Raises:
        ResumeMismatch: another cohort build, another modality set, or (older checkpoints) patients of the
            saved splits that the cohort lacks.
    """
    now = str(cohort.meta.get("build_id") or "")
    saved = state.get("cohort_build_id")
    restart = "start a new run (another --run) or resume against the cohort it was trained on"
    if saved and saved != now:
        raise ResumeMismatch(f"--resume {where}: trained on cohort build {saved}, but {cohort.path} is build {now} "
                             f"(a rebuilt or another cohort); {restart}")
    mods = saved_modalities(state)
    if mods is not None and sorted(mods) != sorted(modalities):
        raise ResumeMismatch(f"--resume {where}: trained on modalities {sorted(mods)}, but this run has "
                             f"{sorted(modalities)} (cohort {cohort.path}, build {now}); {restart}")
    if "preprocessing_id" in state and preprocessing_id(json.loads(state["preprocessing"])) != state["preprocessing_id"]:
        raise ResumeMismatch(f"--resume {where}: its preprocessing does not match its recorded digest "
                             f"{state['preprocessing_id']} (a damaged checkpoint); {restart}")
    if not saved:  # an older checkpoint: at least every patient it split must be there
        known = set(cohort.manifest.case_id)
        splits = json.loads(state.get("splits") or "{}")
        lost = [p for ids in splits.values() for p in ids if p not in known]
        if lost:
            raise ResumeMismatch(f"--resume {where}: {len(lost)} patients of its train/val splits are not in "
                                 f"{cohort.path} (e.g. {', '.join(lost[:3])}); {restart}")
