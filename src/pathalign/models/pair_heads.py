"""Pair heads (DESIGN §4): the adapters ``W_ij`` and the temperatures/biases ``t_ij``, ``b_ij``.

They belong to the model, not to the loss: inference (similarity, pair-space projections,
cross-modal retrieval) needs them. For each ordered pair ``i→j`` a bias-free linear adapter
maps modality ``i`` into the space it shares with ``j``; for each unordered pair ``{i, j}`` a
log-temperature ``t`` (init ``log 10``) and a bias ``b`` (init ``-10``), or one shared ``t``/``b``.
With ``pair_adapters=False`` every adapter is the identity (all modalities share one space,
so they must have one dim).

Example:
    >>> heads = PairHeads({"wsi": 8, "rna": 6}, proj_dim=4)
    >>> z = {"wsi": torch.randn(3, 8), "rna": torch.randn(3, 6)}
    >>> valid = {"wsi": torch.ones(3, dtype=torch.bool), "rna": torch.ones(3, dtype=torch.bool)}
    >>> [p.key for p in heads(z, valid)]
    ['wsi-rna']
    >>> heads.similarity("wsi", z["wsi"], "rna", z["rna"]).shape
    torch.Size([3, 3])
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

SHARED = "shared"


def pair_key(a: str, b: str) -> str:
    """The name of the unordered pair ``(a, b)`` as used in logs and files: ``"a-b"``."""
    return f"{a}-{b}"


@dataclass
class PairProjection:
    """One unordered pair ``{a, b}`` of a batch in its shared space: what the loss consumes.

    Attributes:
        a, b: the modalities (``a`` indexes rows, ``b`` columns).
        u: ``[B, P]`` ``l2norm(W_ab z_a)``; rows whose ``a`` is invalid come from zeros.
        w: ``[B, P]`` ``l2norm(W_ba z_b)``; rows whose ``b`` is invalid come from zeros.
        valid_a, valid_b: ``[B]`` bool, the patient has the modality.
        log_t, bias: scalar log-temperature and bias of the pair.
    """

    a: str
    b: str
    u: Tensor
    w: Tensor
    valid_a: Tensor
    valid_b: Tensor
    log_t: Tensor
    bias: Tensor

    @property
    def key(self) -> str:
        return pair_key(self.a, self.b)


class PairHeads(nn.Module):
    """Adapters and temperature/bias of every trained pair of modalities.

    Args:
        dims: embedding dim per modality (its order fixes the pair order).
        proj_dim: dim of each pair's shared space (ignored with ``pair_adapters=False``).
        pair_adapters: learn ``W_ij`` (False: identity; all dims must be equal).
        shared_temperature: one ``t``/``b`` for every pair.
        pairs: the pairs (default: all, in the order of ``dims``); e.g. ``[("wsi", "rna")]``.
        init_t, init_b: initial log-temperature and bias.
    """

    def __init__(self, dims: dict[str, int], proj_dim: int = 512, pair_adapters: bool = True,
                 shared_temperature: bool = False, pairs: Iterable[Sequence[str]] | None = None,
                 init_t: float = math.log(10.0), init_b: float = -10.0):
        super().__init__()
        if len(dims) < 2:
            raise ValueError(f"pair heads need at least two modalities, got {list(dims)}")
        self.dims = dict(dims)
        self.modalities = list(dims)
        self.pairs: list[tuple[str, str]] = ([tuple(p) for p in pairs] if pairs is not None
                                             else list(itertools.combinations(self.modalities, 2)))
        for a, b in self.pairs:
            if a not in dims or b not in dims or a == b:
                raise ValueError(f"bad pair ({a}, {b}) for modalities {self.modalities}")
        if not pair_adapters and len(set(dims.values())) != 1:
            raise ValueError(f"pair_adapters=False needs one dim for every modality, got {dims}")
        self.pair_adapters, self.shared_temperature = pair_adapters, shared_temperature
        self.proj_dim = proj_dim if pair_adapters else next(iter(dims.values()))
        self._canonical = {frozenset(p): p for p in self.pairs}
        self.adapters = nn.ModuleDict()
        if pair_adapters:
            for a, b in self.pairs:
                self.adapters[f"{a}->{b}"] = nn.Linear(dims[a], proj_dim, bias=False)
                self.adapters[f"{b}->{a}"] = nn.Linear(dims[b], proj_dim, bias=False)
        names = [SHARED] if shared_temperature else [pair_key(a, b) for a, b in self.pairs]
        self.log_t = nn.ParameterDict({n: nn.Parameter(torch.tensor(float(init_t))) for n in names})
        self.bias = nn.ParameterDict({n: nn.Parameter(torch.tensor(float(init_b))) for n in names})

    def _pair(self, a: str, b: str) -> tuple[str, str]:
        try:
            return self._canonical[frozenset((a, b))]
        except KeyError:
            known = ", ".join(pair_key(*p) for p in self.pairs)
            raise KeyError(f"no pair head for {a!r} and {b!r}; this model has {known}") from None

    def temperature_bias(self, a: str, b: str) -> tuple[Tensor, Tensor]:
        """The pair's log-temperature and bias (scalar parameters); ``a``, ``b`` in either order."""
        name = SHARED if self.shared_temperature else pair_key(*self._pair(a, b))
        return self.log_t[name], self.bias[name]

    def project(self, src: str, dst: str, z: Tensor) -> Tensor:
        """``l2norm(W_src->dst z)`` ``[n, P]``: ``src`` embeddings ``z`` ``[n, d_src]`` in the space shared with ``dst``."""
        self._pair(src, dst)
        if self.pair_adapters:
            z = self.adapters[f"{src}->{dst}"](z)
        return F.normalize(z.float(), dim=-1)

    def similarity(self, mod_a: str, emb_a: Tensor, mod_b: str, emb_b: Tensor) -> Tensor:
        """Cosine similarity ``[n_a, n_b]`` of ``emb_a`` and ``emb_b`` in the space the pair shares."""
        return self.project(mod_a, mod_b, emb_a) @ self.project(mod_b, mod_a, emb_b).T

    def forward(self, embeddings: dict[str, Tensor], valid: dict[str, Tensor]) -> list[PairProjection]:
        """Project a batch into every pair's space.

        Invalid rows are replaced by zeros *before* the adapters, so their values (NaN included)
        cannot reach the loss or the gradients.

        Args:
            embeddings: ``[B, d_m]`` per modality (a subset of the modalities is fine).
            valid: ``[B]`` bool per modality in ``embeddings``.

        Returns:
            One :class:`PairProjection` per pair whose two modalities are both given, in pair order.
        """
        batch = None
        clean: dict[str, tuple[Tensor, Tensor]] = {}
        for m in self.modalities:
            if m not in embeddings:
                continue
            z, v = embeddings[m], valid[m].bool()
            batch = z.shape[0] if batch is None else batch
            if z.shape[0] != batch or v.shape[0] != batch:
                raise ValueError(f"modality {m!r}: {z.shape[0]} rows but the batch has {batch}")
            clean[m] = (torch.where(v[:, None], z, torch.zeros_like(z)), v)
        if batch is None:
            raise ValueError("no embeddings given")
        out = []
        for a, b in self.pairs:
            if a in clean and b in clean:
                (za, va), (zb, vb) = clean[a], clean[b]
                t, bias = self.temperature_bias(a, b)
                # clone: outputs that are bare parameters have no grad_fn, so DDP (find_unused_parameters)
                # would take t/b for unused at the end of forward and fail when the loss's gradient reaches them
                out.append(PairProjection(a, b, self.project(a, b, za), self.project(b, a, zb), va, vb,
                                          t.clone(), bias.clone()))
        return out
