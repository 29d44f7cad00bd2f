"""The model-ready view of a cohort: preprocessed molecular arrays in memory, slide features read on demand.

:class:`CohortData` aligns a built cohort (:class:`pathalign.io.cohort_folder.Cohort`) into what a
model takes: per modality a patients x features float32 array and a validity mask, and per patient
the slides that can be used. Training (:mod:`pathalign.train`) draws its batches from it and
``embed`` takes its slides from it.

The molecular transforms are model state (:mod:`pathalign.models.preprocessing`: fitted once on
the training patients, saved in the model folder), and the cohorts and the models are layers that
do not import each other (``tests/test_imports.py``), so this view does not import them: the caller hands in ``transforms`` (an object with ``new``, ``load``
and ``embedding``: :data:`pathalign.models.preprocessing.MODEL_TRANSFORMS`). Injecting them was
chosen over splitting the view in two (slides and masks here, arrays made in ``models``) because the
arrays and the validity masks are built in one pass over the patients, which a split would either
do twice or hand back and forth; the view needs only those three calls of the transforms, and a
view of slides alone (``embed``) needs none.
"""
from __future__ import annotations

import sys
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd

from ..io.cohort_folder import Cohort, CohortInputError
from ..io.feature_checks import check_feature_files
from ..io.feature_reader import FeatureReader
from ..io.features import is_complete
from ..io.features_contract import check_features_folder


class Transforms(Protocol):
    """What :class:`CohortData` needs of the molecular transforms (:class:`pathalign.models.preprocessing.ModelTransforms`)."""

    def new(self, modality: str, cohort_meta: dict, **options: Any) -> Any: ...

    def load(self, state: dict) -> Any: ...

    def embedding(self) -> Any: ...


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
            (None: 5 % of RAM up to 4 GiB; see :mod:`pathalign.io.feature_reader`).
        hidden: ``{modality: patient ids}`` treated as not measured (training-time missingness): they
            are left out of the preprocessing fit and their rows are invalid, as for a patient without it.
        report_slides: print the slides left out because they cannot be used (``slide_problems`` has them
            either way: zero patches, no features, another feature dim).
        transforms: makes and restores the molecular transforms (``new``, ``load``, ``embedding``); callers
            pass :data:`pathalign.models.preprocessing.MODEL_TRANSFORMS`. Needed only for molecular modalities.
    """

    def __init__(self, cohort: Cohort, features_dir: str | Path | None, modalities: list[str],
                 train_ids: Sequence[str] | None = None,
                 preprocessing: dict | None = None, transform_options: dict | None = None,
                 rna_embeddings: pd.DataFrame | None = None, feature_cache_bytes: int | None = None,
                 hidden: dict[str, set[str]] | None = None, report_slides: bool = True,
                 transforms: Transforms | None = None):
        self.cohort = cohort
        if transforms is None and any(m != "wsi" for m in modalities):
            raise ValueError("CohortData of molecular modalities needs transforms= "
                             "(pathalign.models.preprocessing.MODEL_TRANSFORMS)")
        self.transforms = transforms
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
        self.features_contracts: dict[str, dict] = {}  # slide id -> file_contract, of the slides used
        if "wsi" in self.modalities:
            for i, sids in enumerate(man.slide_ids):
                self.slides[i] = [s for s in sids if is_complete(self.features_dir / f"{s}.h5")]
            self._drop_unusable_slides(report_slides)
            self.features_contracts = check_features_folder(self.features_dir, [s for ss in self.slides for s in ss])
            self.valid["wsi"] = np.array([len(s) > 0 for s in self.slides])
            if not self.valid["wsi"].any():
                raise CohortInputError(f"no patient has a complete features file in {self.features_dir}")
        self.n_valid = np.sum([self.valid[m] for m in self.modalities], axis=0)

    def _saved_transform(self, m: str):
        state = self.preprocessing[m]
        if not isinstance(state, dict) or "kind" not in state:
            raise CohortInputError(f"bad preprocessing state for {m}")
        return self.transforms.load(state)

    def _prepare_store(self, m: str, store, hidden: set[str], train_ids: list[str], options: dict):
        """``(transform, patients, transformed rows)`` of modality ``m`` from its matrix file: the fit
        streams column blocks, the transform reads only the selected features (all of them for a
        transform that is not columnwise)."""
        present = [p for p in store.patients if p not in hidden]
        have = set(present)
        if m in self.preprocessing:
            tr = self._saved_transform(m)
        else:
            tr = self.transforms.new(m, self.cohort.meta, **dict(options))
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
            tr = self.transforms.embedding().fit(mat.loc[[p for p in train_ids if p in mat.index]])
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
