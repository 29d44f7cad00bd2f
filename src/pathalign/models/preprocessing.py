"""Training-time preprocessing of molecular matrices, fitted on training patients only.

Each modality has a transform with ``fit(df)``, ``transform(df) -> float32 [n, d]`` and a
JSON-serialisable ``state_dict()``, stored with the model so that new patients are embedded
with the same transform. Missing values are never silently zero: they are imputed with the
training mean *and* flagged by an indicator column for every feature that had missing
values in training (``na_features``); values missing at inference in other features are
imputed with the training mean and counted in ``last_imputed``; ``last_imputed_fraction`` holds,
per row of the last ``transform``, the fraction of the selected features without a value
(imputed with the training mean, flagged or not).

The transforms are model state (fitted once, stored in the model folder), so they live with the
model, below training. The cohort's model-ready view (:class:`pathalign.cohort.model_view.CohortData`)
does not import the models (nor they the cohorts): its callers hand it :data:`MODEL_TRANSFORMS`.
"""
from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, Self

import numpy as np
import pandas as pd

from ..io.cohort_folder import CohortInputError
from ..registry import Registry

if TYPE_CHECKING:
    from ..io.matrix_store import MatrixStore

TRANSFORMS: Registry[type] = Registry("molecular transform")


def _to_tpm(values: np.ndarray, units: str, lengths: np.ndarray | None) -> np.ndarray:
    """RNA values (samples x genes) of ``units`` → TPM."""
    if units == "tpm":
        return values
    if units == "log2tpm":
        return np.exp2(values) - 1
    if units in ("fpkm", "log2fpkm"):
        fpkm = values if units == "fpkm" else np.exp2(values) - 1
        return fpkm / np.nansum(fpkm, axis=1, keepdims=True) * 1e6
    if units == "counts":
        if lengths is None:
            raise CohortInputError("RNA counts need gene lengths to make TPM")
        rate = values / (lengths[None, :] / 1e3)
        return rate / np.nansum(rate, axis=1, keepdims=True) * 1e6
    raise CohortInputError(f"unknown RNA units {units!r}")


def top_variance(values: np.ndarray, names: list[str], k: int) -> list[str]:
    """The ``k`` highest-variance columns (NaN ignored), in their original order."""
    return top_by_variance(ColumnStats.of(values).var, names, k)


def top_by_variance(var: np.ndarray, names: list[str], k: int) -> list[str]:
    """The ``k`` names of highest ``var`` (NaN: an all-missing column, ranked last), in their original order."""
    var = np.nan_to_num(var, nan=-1)
    return [names[i] for i in sorted(np.argsort(-var, kind="stable")[:k])]


@dataclass
class ColumnStats:
    """Per-column statistics of a patients x features array (NaN ignored): all a fit needs.

    Computed column block by column block they equal those of the whole array exactly: every
    column is reduced over its rows alone, in Fortran order, so by the same summation whatever
    the block's width.
    """

    mean: np.ndarray  # float64 [F], NaN for an all-missing column
    var: np.ndarray  # float64 [F] (ddof 0), NaN for an all-missing column
    has_nan: np.ndarray  # bool [F]

    @classmethod
    def of(cls, values: np.ndarray) -> ColumnStats:
        """The statistics of ``values`` ``[n, F]``."""
        values = np.asfortranarray(values, dtype=np.float64)
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-missing columns: NaN, handled by the callers
            return cls(np.nanmean(values, axis=0), np.nanvar(values, axis=0), np.isnan(values).any(axis=0))

    @classmethod
    def concat(cls, parts: list[ColumnStats]) -> ColumnStats:
        """The statistics of the column blocks ``parts`` side by side."""
        return cls(*(np.concatenate([getattr(p, k) for p in parts]) for k in ("mean", "var", "has_nan")))


@dataclass
class _Base:
    """Shared fit/transform; subclasses define ``_values`` (raw → model space) and ``_select``."""

    features: list[str] = field(default_factory=list)
    fill: list[float] = field(default_factory=list)  # training mean in model space, used to impute
    center: list[float] = field(default_factory=list)
    scale: list[float] = field(default_factory=list)
    na_features: list[str] = field(default_factory=list)
    standardise: bool = True

    def __post_init__(self):
        self.last_imputed = 0
        self.last_imputed_fraction = np.zeros(0, np.float32)

    @property
    def output_dim(self) -> int:
        return len(self.features) + len(self.na_features)

    def _values(self, df: pd.DataFrame) -> np.ndarray:
        return df.to_numpy(np.float64)

    def _select(self, stats: ColumnStats, names: list[str]) -> list[str]:
        return names

    @property
    def columnwise(self) -> bool:
        """Whether ``_values`` maps each column on its own (then a fit can stream column blocks and a
        transform needs only the selected columns); False when a value depends on its whole row."""
        return True

    def _check_rows(self, n: int) -> None:
        if n < 2:
            raise CohortInputError(f"{type(self).__name__}: need at least 2 training patients, got {n}")

    def fit(self, df: pd.DataFrame) -> Self:
        """Fit on the training patients' raw matrix ``df`` (patients x features)."""
        self._check_rows(len(df))
        return self._fit_stats(ColumnStats.of(self._values(df)), list(map(str, df.columns)))

    def fit_store(self, store: MatrixStore, patients: Sequence[str], width: int | None = None) -> Self:
        """Fit on the rows ``patients`` of a matrix file in one pass over its column blocks, without
        holding more than one block (``width`` columns; default: ``store.block_width``) in memory.

        Equals ``fit(store.frame(patients))`` exactly. A transform that is not :attr:`columnwise`
        (RNA counts or FPKM, normalised per sample over all genes) reads the rows whole instead.

        Args:
            store: the matrix file (``Cohort.store``).
            patients: the training patients, each a row of ``store``; their order is kept.
            width: columns per block.
        """
        self._check_rows(len(patients))
        if not self.columnwise:
            return self.fit(store.frame(patients))
        names = list(store.features)
        parts = [ColumnStats.of(self._values(pd.DataFrame(block, columns=names[a:a + block.shape[1]], copy=False)))
                 for a, block in store.column_blocks(patients, width)]
        if not parts:
            return self._fit_stats(ColumnStats.of(np.zeros((len(patients), 0))), names)
        return self._fit_stats(ColumnStats.concat(parts), names)

    def _fit_stats(self, stats: ColumnStats, names: list[str]) -> Self:
        self.features = self._select(stats, names)
        position = {n: i for i, n in enumerate(names)}
        idx = np.array([position[f] for f in self.features], dtype=np.int64)
        mean = np.nan_to_num(stats.mean[idx])
        std = np.sqrt(stats.var[idx])  # as np.nanstd
        std = np.where(np.isfinite(std) & (std > 1e-8), std, 1.0)
        self.fill = mean.tolist()
        self.center = mean.tolist() if self.standardise else [0.0] * len(mean)
        self.scale = std.tolist() if self.standardise else [1.0] * len(mean)
        self.na_features = [f for f, has in zip(self.features, stats.has_nan[idx]) if has]
        return self

    def transform_masked(self, df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """Selected features standardised, ``(values float32 [n, F], observed bool [n, F])``; unobserved values are 0."""
        if not self.features:
            raise CohortInputError(f"{type(self).__name__} is not fitted")
        lookup = {str(n): i for i, n in enumerate(df.columns)}
        values = self._values(df)
        out = np.full((len(df), len(self.features)), np.nan)
        present = [(j, lookup[f]) for j, f in enumerate(self.features) if f in lookup]
        if present:
            cols_out, cols_in = zip(*present)
            out[:, list(cols_out)] = values[:, list(cols_in)]
        observed = ~np.isnan(out)
        out = (out - np.asarray(self.center)) / np.asarray(self.scale)
        return np.where(observed, out, 0.0).astype(np.float32), observed

    def transform(self, df: pd.DataFrame) -> np.ndarray:
        """``float32 [n, output_dim]``: selected features, imputed with the training mean and standardised,
        then one missing-value indicator per feature in ``na_features``."""
        values, observed = self.transform_masked(df)
        fill = (np.asarray(self.fill) - np.asarray(self.center)) / np.asarray(self.scale)
        values = np.where(observed, values, fill[None, :].astype(np.float32))
        na_idx = [self.features.index(f) for f in self.na_features]
        flagged = np.zeros(len(self.features), bool)
        flagged[na_idx] = True
        self.last_imputed = int((~observed[:, ~flagged]).sum())
        self.last_imputed_fraction = (~observed).mean(axis=1).astype(np.float32)  # [n]
        return np.concatenate([values, ~observed[:, na_idx]], axis=1).astype(np.float32)

    def state_dict(self) -> dict:
        """JSON-serialisable state (``from_state_dict`` restores it)."""
        return {"kind": type(self).kind, **{k: v for k, v in vars(self).items() if not k.startswith("last_")}}

    @staticmethod
    def from_state_dict(state: dict) -> _Base:
        """The transform a :meth:`state_dict` describes; unknown keys are an error naming them."""
        state = dict(state)
        cls = TRANSFORMS.get(state.pop("kind"))
        return _construct(cls, state, f"{cls.__name__} state")


@TRANSFORMS.register("rna")
@dataclass
class RNATransform(_Base):
    """log2(TPM+1) (from the declared units), top-variance genes (or a given list), standardised."""

    kind = "rna"
    units: str = "tpm"
    n_genes: int = 2000
    genes: list[str] | None = None
    gene_lengths: dict[str, float] | None = None

    def _values(self, df):
        lengths = None
        if self.units == "counts":
            if not self.gene_lengths:
                raise CohortInputError("RNA counts need gene lengths (cohort build --gene-lengths)")
            lengths = np.array([self.gene_lengths.get(str(g), np.nan) for g in df.columns])
            if np.isnan(lengths).any():
                bad = [str(g) for g, l in zip(df.columns, lengths) if np.isnan(l)][:5]
                raise CohortInputError(f"no gene length for {bad}")
        return np.log2(np.clip(_to_tpm(df.to_numpy(np.float64), self.units, lengths), 0, None) + 1)

    @property
    def columnwise(self) -> bool:
        return self.units in ("tpm", "log2tpm")

    def _select(self, stats, names):
        if self.genes is not None:
            have = set(names)
            missing = [g for g in self.genes if g not in have]
            if missing:
                raise CohortInputError(f"requested genes not in the RNA matrix: {missing[:5]}")
            return list(self.genes)
        return top_by_variance(stats.var, names, self.n_genes)


@TRANSFORMS.register("snp")
@dataclass
class SNPTransform(_Base):
    """Binary mutation status of genes mutated in at least ``min_freq`` of training patients (top ``max_genes``)."""

    kind = "snp"
    min_freq: float = 0.02
    max_genes: int = 1000
    standardise: bool = False

    def _select(self, stats, names):
        freq = stats.mean
        keep = [i for i in np.argsort(-freq, kind="stable")[: self.max_genes] if freq[i] >= self.min_freq]
        if not keep:
            raise CohortInputError(f"no gene is mutated in >= {self.min_freq:.0%} of training patients")
        return [names[i] for i in sorted(keep)]


@TRANSFORMS.register("cnv")
@dataclass
class CNVTransform(_Base):
    """Gene-level copy number clipped (GISTIC -2..2, log2 ratios -3..3), top-variance genes, standardised."""

    kind = "cnv"
    cnv_kind: str = "gistic"
    max_genes: int = 2000

    def _values(self, df):
        lim = 2.0 if self.cnv_kind == "gistic" else 3.0
        return np.clip(df.to_numpy(np.float64), -lim, lim)

    def _select(self, stats, names):
        return top_by_variance(stats.var, names, self.max_genes)


@TRANSFORMS.register("methylation")
@dataclass
class MethylationTransform(_Base):
    """Beta values of the top-variance probes; NaN imputed with the training mean plus indicator columns."""

    kind = "methylation"
    max_probes: int = 2000

    def _select(self, stats, names):
        return top_by_variance(stats.var, names, self.max_probes)


def make_transform(modality: str, cohort_meta: dict, **options: Any) -> _Base:
    """The transform of ``modality`` configured from the cohort's recorded units."""
    units = cohort_meta.get("units", {})
    if modality == "rna":
        options.setdefault("units", units.get("rna", "tpm"))
        if options["units"] == "counts":
            options.setdefault("gene_lengths", cohort_meta.get("gene_lengths"))
    if modality == "cnv":
        options.setdefault("cnv_kind", units.get("cnv", "gistic"))
    return _construct(TRANSFORMS.get(modality), options, f"{modality} transform options")


def _construct(cls, options: dict, where: str):
    """``cls(**options)``; keys that are not fields of ``cls`` are an error naming them and ``where``."""
    known = {f.name for f in fields(cls) if f.init}
    unknown = sorted(set(options) - known)
    if unknown:
        raise CohortInputError(f"{where}: unknown key(s) {unknown}; known: {sorted(known)}")
    return cls(**options)


@TRANSFORMS.register("embedding")
@dataclass
class EmbeddingTransform(_Base):
    """Precomputed embeddings from an external model (e.g. an RNA foundation model): every column, standardised."""

    kind = "embedding"


class ModelTransforms:
    """The transforms as the cohort's model view asks for them (``transforms=`` of
    :class:`pathalign.cohort.model_view.CohortData`): a new one per modality, a saved one, the embedding one."""

    def new(self, modality: str, cohort_meta: dict, **options: Any) -> _Base:
        """An unfitted transform of ``modality`` (:func:`make_transform`)."""
        return make_transform(modality, cohort_meta, **options)

    def load(self, state: dict) -> _Base:
        """A fitted transform from its ``state_dict()`` (the ``kind`` key names its class)."""
        return TRANSFORMS.get(state["kind"]).from_state_dict(state)

    def embedding(self) -> _Base:
        """An unfitted transform of precomputed embeddings (every column, standardised)."""
        return TRANSFORMS.get("embedding")()


MODEL_TRANSFORMS = ModelTransforms()
