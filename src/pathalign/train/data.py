"""Training data: preprocessed molecular arrays in memory, slide features read on demand,
and batches that are a pure function of (seed, step) — so any number of workers, any rank
layout and any resume point see exactly the same batches."""
from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from ..cohort import Cohort, CohortInputError
from ..cohort.preprocess import TRANSFORMS, make_transform
from ..models.packing import draw_patient_rows
from ..slides.contract import check_features_folder
from ..slides.feature_checks import check_feature_files
from ..slides.features_io import is_complete
from .feature_reader import FeatureReader

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


class CohortData:
    """Model-ready view of a cohort for a set of modalities.

    Args:
        cohort: the built cohort.
        features_dir: folder of ``<slide_id>.h5`` patch features (default: the cohort's).
        modalities: modalities to use.
        train_ids: patients the preprocessing is fitted on.
        preprocessing: transform states to reuse (e.g. from a saved model) instead of fitting.
        transform_options: per-modality options of the transforms (e.g. ``{"rna": {"n_genes": 1000}}``).
        rna_embeddings: optional table (rows = patients or samples, columns = dims) used as the RNA input.
        feature_cache_bytes: byte budget of the slide-feature cache, all loader processes together
            (None: 5 % of RAM up to 4 GiB; see :mod:`.feature_reader`).
        hidden: ``{modality: patient ids}`` treated as not measured (training-time missingness): they
            are left out of the preprocessing fit and their rows are invalid, as for a patient without it.
        report_slides: print the slides left out because they cannot be used (``slide_problems`` has them
            either way: zero patches, no features, another feature dim).
    """

    def __init__(self, cohort: Cohort, features_dir: str | Path | None, modalities: list[str],
                 train_ids: Sequence[str] | None = None,
                 preprocessing: dict | None = None, transform_options: dict | None = None,
                 rna_embeddings: pd.DataFrame | None = None, feature_cache_bytes: int | None = None,
                 hidden: dict[str, set[str]] | None = None, report_slides: bool = True):
        self.cohort = cohort
        man = cohort.manifest.reset_index(drop=True)
        self.ids = man.case_id.tolist()
        self.index = {p: i for i, p in enumerate(self.ids)}
        self.modalities = list(modalities)
        for m in self.modalities:
            if m not in cohort.modalities and not (m == "rna" and rna_embeddings is not None):
                raise CohortInputError(f"{cohort.path}: no patient has {m}; drop it from the modalities "
                                       f"(the cohort has {cohort.modalities})")
        self.features_dir = Path(features_dir or cohort.meta.get("slides_dir") or "")
        self.reader = FeatureReader(self.features_dir, feature_cache_bytes)
        self.valid = {m: np.zeros(len(self.ids), bool) for m in self.modalities}
        self.arrays: dict[str, np.ndarray] = {}
        self.preprocessing: dict = dict(preprocessing or {})
        opts = transform_options or {}
        train_ids = list(train_ids if train_ids is not None else self.ids)
        hidden = hidden or {}
        for m in self.modalities:
            if m == "wsi":
                continue
            if m == "rna" and rna_embeddings is not None:
                tr, rows, x = self._prepare_table(rna_embeddings, hidden.get(m, set()), train_ids)
            else:
                with cohort.store(m) as store:  # a wide matrix: only the blocks needed, never all of it at once
                    tr, rows, x = self._prepare_store(m, store, hidden.get(m, set()), train_ids, opts.get(m, {}))
            arr = np.zeros((len(self.ids), tr.output_dim), np.float32)
            if rows:
                arr[[self.index[p] for p in rows]] = x
                self.valid[m][[self.index[p] for p in rows]] = True
            self.arrays[m] = arr
        self.slides: list[list[str]] = [[] for _ in self.ids]
        self.slide_problems: dict[str, str] = {}
        if "wsi" in self.modalities:
            for i, sids in enumerate(man.slide_ids):
                self.slides[i] = [s for s in sids if is_complete(self.features_dir / f"{s}.h5")]
            self._drop_unusable_slides(report_slides)
            check_features_folder(self.features_dir, [s for ss in self.slides for s in ss])
            self.valid["wsi"] = np.array([len(s) > 0 for s in self.slides])
            if not self.valid["wsi"].any():
                raise CohortInputError(f"no patient has a complete features file in {self.features_dir}")
        self.n_valid = np.sum([self.valid[m] for m in self.modalities], axis=0)

    def _saved_transform(self, m: str):
        state = self.preprocessing[m]
        if not isinstance(state, dict) or "kind" not in state:
            raise CohortInputError(f"bad preprocessing state for {m}")
        return TRANSFORMS.get(state["kind"]).from_state_dict(state)

    def _prepare_store(self, m: str, store, hidden: set[str], train_ids: list[str], options: dict):
        """``(transform, patients, transformed rows)`` of modality ``m`` from its matrix file: the fit
        streams column blocks, the transform reads only the selected features (all of them for a
        transform that is not columnwise)."""
        present = [p for p in store.patients if p not in hidden]
        have = set(present)
        if m in self.preprocessing:
            tr = self._saved_transform(m)
        else:
            tr = make_transform(m, self.cohort.meta, **dict(options))
            tr.fit_store(store, [p for p in train_ids if p in have])
            self.preprocessing[m] = tr.state_dict()
        rows = [p for p in self.ids if p in have]
        if not rows:
            return tr, rows, None
        stored = set(store.features)
        cols = [f for f in dict.fromkeys(tr.features) if f in stored] if tr.columnwise else None
        return tr, rows, tr.transform(store.frame(rows, cols))

    def _prepare_table(self, mat: pd.DataFrame, hidden: set[str], train_ids: list[str]):
        """As :meth:`_prepare_store` for a table in memory (precomputed RNA embeddings)."""
        if hidden:
            mat = mat.loc[~mat.index.isin(hidden)]
        if "rna" in self.preprocessing:
            tr = self._saved_transform("rna")
        else:
            tr = TRANSFORMS.get("embedding")().fit(mat.loc[[p for p in train_ids if p in mat.index]])
            self.preprocessing["rna"] = tr.state_dict()
        rows = [p for p in self.ids if p in mat.index]
        return tr, rows, tr.transform(mat.loc[rows]) if rows else None

    def _drop_unusable_slides(self, report: bool) -> None:
        """Check every slide a batch may draw before any step (shapes only); leave out and name the unusable ones.

        Zero-patch slides, files without features or with another feature dim would otherwise stop
        training at the first step that draws them.
        """
        check = check_feature_files(self.features_dir, [s for ss in self.slides for s in ss])
        self.slide_problems = check.problems
        if not check.problems:
            return
        self.slides = [[s for s in ss if s not in check.problems] for ss in self.slides]
        if report:
            print(f"warning: {len(check.problems)} slides left out, they cannot be used: {check.describe()}",
                  file=sys.stderr)

    @cached_property
    def input_dims(self) -> dict[str, int]:
        dims = {m: a.shape[1] for m, a in self.arrays.items()}
        if "wsi" in self.modalities:
            first = next(s for ss in self.slides for s in ss)
            dims["wsi"] = self.reader.index(first).dim
        return dims

    def eligible(self, ids: Sequence[str]) -> np.ndarray:
        """Indices of ``ids`` with at least two modalities (the ones training samples)."""
        idx = np.array([self.index[p] for p in ids], int)
        return idx[self.n_valid[idx] >= 2]

    def load_slide(self, slide_id: str, rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(features float32, coords, fragment)`` of a slide's ``rows`` (increasing; None: all)."""
        return self.reader.read(slide_id, rows)


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
