"""Training data: the patient split, and batches that are a pure function of (seed, step) — so any
number of workers, any rank layout and any resume point see exactly the same batches. The batches
draw on the cohort's model-ready view (:class:`pathalign.cohort.model_view.CohortData`: preprocessed
molecular arrays in memory, slide features read on demand)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from ..cohort import CohortInputError
from ..cohort.model_view import CohortData
from ..models.packing import draw_patient_rows

DEFAULT_VAL_FRACTION = 0.2  # TrainConfig.val_fraction
DEFAULT_STRATIFY = "cancer_type"  # TrainConfig.stratify


def split_patients(manifest: pd.DataFrame, val_fraction: float, seed: int, stratify: str | None = None) -> dict:
    """Patient-level train/val split (stratified by ``stratify`` when given)."""
    rng = np.random.default_rng([seed, 11])
    ids = manifest.case_id.to_numpy()
    groups = manifest[stratify].astype(str).to_numpy() if stratify and stratify in manifest else np.zeros(len(ids), str)
    val = []
    for g in np.unique(groups):
        members = ids[groups == g]
        n_val = int(round(val_fraction * len(members)))
        val += list(rng.choice(members, n_val, replace=False)) if n_val else []
    val_set = set(val)
    return {"train": [p for p in ids if p not in val_set], "val": [p for p in ids if p in val_set]}


def training_split(manifest: pd.DataFrame, seed: int, val_fraction: float | None = None,
                   stratify: str | None = None) -> dict:
    """The split ``pathalign train --seed seed`` draws (its default ``val_fraction``/``stratify`` when None).

    Returns:
        ``{"train": ids, "val": ids, "seed", "val_fraction", "stratify"}``.
    """
    vf = DEFAULT_VAL_FRACTION if val_fraction is None else val_fraction
    st = DEFAULT_STRATIFY if stratify is None else stratify
    return {**split_patients(manifest, vf, seed, st), "seed": seed, "val_fraction": vf, "stratify": st}


def split_notes(manifest: pd.DataFrame, splits: dict, stratify: str | None) -> list[str]:
    """One-line notes on a :func:`split_patients` split: a ``stratify`` column that is absent, and the sizes.

    Args:
        manifest: the cohort manifest the split was drawn from.
        splits: ``{"train": ids, "val": ids}``.
        stratify: the requested stratification column (None: none asked for).
    Returns:
        The lines, in order (the missing-column note first when there is one).
    """
    notes = []
    if stratify and stratify not in manifest:
        notes.append(f"stratify column {stratify!r} is not in the cohort manifest; the split is unstratified "
                     f"(choose one of its columns with --stratify)")
        how = "unstratified"
    else:
        how = f"stratified by {stratify!r}" if stratify else "unstratified"
    notes.append(f"split: {len(splits['train'])} train / {len(splits['val'])} val patients of {len(manifest)} "
                 f"({how}; the val patients are the held-out ones, there is no separate test split)")
    return notes


@dataclass
class BatchSpec:
    """What a batch depends on: everything else is derived from (seed, step)."""

    seed: int
    batch_size: int
    max_tokens: int
    modality_dropout: float
    rank: int = 0
    world_size: int = 1
    wsi_level: str = "slide"  # "patient": every usable slide of a patient, max_tokens patches for them together


class StepBatches(Dataset):
    """``dataset[step]`` = this rank's share of the global batch of that step (a dict ready for the model).

    Slide level (``spec.wsi_level == "slide"``): one slide per patient, drawn at random, at most
    ``max_tokens`` of its patches. Patient level: all of the patient's usable slides, at most
    ``max_tokens`` patches for the patient, shared across its slides in proportion to their patches
    (:func:`~pathalign.models.packing.draw_patient_rows`); ``slides`` then holds one list of slides per
    row and ``slide_ids`` one list of ids. Either way the draw is a function of (seed, step) alone.
    """

    def __init__(self, data: CohortData, train_idx: np.ndarray, spec: BatchSpec):
        if len(train_idx) < spec.batch_size:
            raise CohortInputError(f"batch size {spec.batch_size} exceeds the {len(train_idx)} trainable patients")
        if spec.batch_size % spec.world_size:
            raise ValueError(f"batch size {spec.batch_size} is not divisible by {spec.world_size} ranks")
        self.data, self.train_idx, self.spec = data, np.asarray(train_idx), spec
        self.steps_per_epoch = len(train_idx) // spec.batch_size

    def __len__(self) -> int:
        return 1 << 40

    def patients(self, step: int) -> np.ndarray:
        """Indices of the global batch of ``step`` (a new permutation every epoch, drop-last)."""
        epoch, k = divmod(step, self.steps_per_epoch)
        perm = np.random.default_rng([self.spec.seed, 1, epoch]).permutation(self.train_idx)
        return perm[k * self.spec.batch_size:(k + 1) * self.spec.batch_size]

    def __getitem__(self, step: int) -> dict:
        spec, data = self.spec, self.data
        rng = np.random.default_rng([spec.seed, 2, step])
        glob_idx = self.patients(step)
        valid = {m: data.valid[m][glob_idx].copy() for m in data.modalities}
        if spec.modality_dropout > 0:  # drop modalities at random, keeping at least two per patient
            for r in range(len(glob_idx)):
                present = [m for m in data.modalities if valid[m][r]]
                for m in rng.permutation(present):
                    if sum(valid[x][r] for x in data.modalities) <= 2:
                        break
                    if rng.random() < spec.modality_dropout:
                        valid[m][r] = False
        choice = [rng.integers(len(data.slides[i])) if data.slides[i] else -1 for i in glob_idx]
        token_seeds = rng.integers(0, 2**31, len(glob_idx))
        per = len(glob_idx) // spec.world_size
        mine = slice(spec.rank * per, (spec.rank + 1) * per)
        idx = glob_idx[mine]
        batch = {"patients": [data.ids[i] for i in idx], "step": step,
                 "valid": {m: torch.from_numpy(v[mine]) for m, v in valid.items()}}
        for m in data.arrays:
            batch[m] = torch.from_numpy(data.arrays[m][idx])
        if "wsi" in data.modalities:
            slides, rows, names = [], [], []
            for r, (i, c, ts) in enumerate(zip(idx, np.asarray(choice)[mine], token_seeds[mine])):
                if not batch["valid"]["wsi"][r]:
                    continue
                if spec.wsi_level == "patient":
                    slides.append(self._patient_slides(data.slides[i], spec.max_tokens, ts))
                    rows.append(r)
                    names.append(list(data.slides[i]))
                    continue
                sid = data.slides[i][c]
                n = data.reader.n_patches(sid)
                keep = None
                if n > spec.max_tokens:  # random subset chosen from the length alone, coordinates kept
                    keep = np.sort(np.random.default_rng(ts).choice(n, spec.max_tokens, replace=False))
                feats, coords, frag = data.load_slide(sid, keep)  # only those rows are read
                slides.append((torch.from_numpy(feats), torch.from_numpy(coords), torch.from_numpy(frag)))
                rows.append(r)
                names.append(sid)
            batch.update(slides=slides, slide_rows=torch.tensor(rows, dtype=torch.long), slide_ids=names)
        return batch

    def _patient_slides(self, slide_ids: list[str], max_tokens: int, seed: int) -> list[tuple]:
        """All of a patient's slides, at most ``max_tokens`` patches together (rows chosen from the lengths alone)."""
        keep = draw_patient_rows([self.data.reader.n_patches(s) for s in slide_ids], max_tokens, seed)
        out = []
        for sid, rows in zip(slide_ids, keep):
            feats, coords, frag = self.data.load_slide(sid, rows)  # only those rows are read
            out.append((torch.from_numpy(feats), torch.from_numpy(coords), torch.from_numpy(frag)))
        return out
