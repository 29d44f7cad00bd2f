"""Multimodal SigLIP loss with pair adapters and ValidPair masking (DESIGN §4).

For every unordered pair {i, j} of modalities: ``u = l2norm(W_ij z_i)``, ``w = l2norm(W_ji z_j)``,
``logits = exp(t_ij) u wᵀ + b_ij``, labels +1 on the diagonal (same patient) and -1 elsewhere,
mask ``V = v_i ⊗ v_j``; ``loss_ij = -Σ V·logsigmoid(labels·logits) / max(1, #valid positives)``
(``balance="siglip"``) or mean over valid positives + mean over valid negatives (``"pos_neg"``);
the total is the mean over pairs with any valid entry. Invalid embeddings are replaced by zeros
*before* anything is computed from them, so their values cannot matter and their gradients are
exactly zero.

Distributed (``world_size > 1``): the column side ``w`` and its validity are all-gathered; the
gather's backward sums the gradient from every rank into the owner's rows (reduce-scatter).
Each rank computes the rows it owns; ``.loss`` is the global loss on every rank, and the
backward pass is scaled by ``world_size`` so that after DDP's gradient averaging every
gradient equals the single-process gradient on the concatenated global batch. The local term
(:func:`pair_terms`) and the exchange (:class:`_Exchange`) are kept apart.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

BALANCES = ("siglip", "pos_neg")


@dataclass
class LossOutput:
    """``loss``: scalar to backpropagate (its value is the global loss); ``per_pair``: detached values."""

    loss: Tensor
    per_pair: dict[str, Tensor] = field(default_factory=dict)


def pair_key(a: str, b: str) -> str:
    return f"{a}-{b}"


def pair_terms(u: Tensor, w: Tensor, v_rows: Tensor, v_cols: Tensor, row_offset: int, t: Tensor, b: Tensor) -> dict:
    """Sums of the loss terms of rows ``u`` against columns ``w`` (local computation).

    Args:
        u: ``[Br, P]`` normalised row embeddings; w: ``[Bc, P]`` normalised columns.
        v_rows / v_cols: validity; row ``r`` is the same patient as column ``row_offset + r``.
        t, b: log-temperature and bias.

    Returns:
        dict of scalar tensors: ``pos_sum``, ``neg_sum`` (sums of -logsigmoid over valid entries) and
        ``n_pos``, ``n_neg`` (counts, no gradient).
    """
    logits = torch.exp(t) * (u @ w.T) + b  # [Br, Bc]
    br, bc = logits.shape
    diag = torch.zeros(br, bc, dtype=torch.bool, device=u.device)
    rows = torch.arange(br, device=u.device)
    diag[rows, rows + row_offset] = True
    labels = diag.to(logits.dtype) * 2 - 1
    valid = v_rows[:, None] & v_cols[None, :]
    terms = -F.logsigmoid(labels * logits) * valid  # invalid entries are exactly 0
    pos, neg = valid & diag, valid & ~diag
    return {"pos_sum": (terms * diag).sum(), "neg_sum": (terms * ~diag).sum(),
            "n_pos": pos.sum().detach(), "n_neg": neg.sum().detach()}


class _Exchange:
    """All-gather with the gradient summed back into the owner's rows (reduce-scatter backward)."""

    def __init__(self, rank: int, world_size: int):
        self.rank, self.world_size = rank, world_size

    def gather(self, x: Tensor) -> Tensor:
        if self.world_size == 1:
            return x
        import warnings

        from torch.distributed.nn.functional import all_gather  # autograd-aware: backward = reduce-scatter (sum)

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            return torch.cat(all_gather(x.contiguous()), dim=0)

    def gather_nograd(self, x: Tensor) -> Tensor:
        if self.world_size == 1:
            return x
        import torch.distributed as dist

        parts = [torch.empty_like(x) for _ in range(self.world_size)]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts, dim=0)

    def sum(self, x: Tensor) -> Tensor:
        if self.world_size == 1:
            return x
        import torch.distributed as dist

        x = x.detach().clone()
        dist.all_reduce(x)
        return x


class MultimodalSigLIPLoss(nn.Module):
    """All-pairwise sigmoid contrastive loss over modalities with pair adapters.

    Args:
        dims: embedding dim per modality (its order fixes the pair order).
        proj_dim: dim of each pair's shared space.
        pair_adapters: learn ``W_ij`` (False: identity; all dims must be equal).
        balance: ``"siglip"`` or ``"pos_neg"``.
        shared_temperature: one ``t``/``b`` for every pair.
        pairs: the pairs to train (default: all); e.g. ``[("wsi", "rna")]`` for a single-pair loss.
        rank, world_size: distributed position (``world_size > 1`` needs ``torch.distributed``).
    """

    def __init__(self, dims: dict[str, int], proj_dim: int = 512, pair_adapters: bool = True, balance: str = "siglip",
                 shared_temperature: bool = False, pairs=None, rank: int = 0, world_size: int = 1,
                 init_t: float = math.log(10.0), init_b: float = -10.0):
        super().__init__()
        if balance not in BALANCES:
            raise ValueError(f"balance must be one of {BALANCES}, got {balance!r}")
        if len(dims) < 2:
            raise ValueError(f"the loss needs at least two modalities, got {list(dims)}")
        self.dims = dict(dims)
        self.modalities = list(dims)
        self.pairs = [tuple(p) for p in pairs] if pairs is not None else list(itertools.combinations(self.modalities, 2))
        for a, b in self.pairs:
            if a not in dims or b not in dims or a == b:
                raise ValueError(f"bad pair ({a}, {b}) for modalities {self.modalities}")
        self.pair_adapters, self.balance, self.shared_temperature = pair_adapters, balance, shared_temperature
        if not pair_adapters and len(set(dims.values())) != 1:
            raise ValueError(f"pair_adapters=False needs one dim for every modality, got {dims}")
        self.proj_dim = proj_dim if pair_adapters else next(iter(dims.values()))
        self.adapters = nn.ModuleDict()
        if pair_adapters:
            for a, b in self.pairs:
                self.adapters[f"{a}->{b}"] = nn.Linear(dims[a], proj_dim, bias=False)
                self.adapters[f"{b}->{a}"] = nn.Linear(dims[b], proj_dim, bias=False)
        names = ["shared"] if shared_temperature else [pair_key(a, b) for a, b in self.pairs]
        self.log_t = nn.ParameterDict({n: nn.Parameter(torch.tensor(float(init_t))) for n in names})
        self.bias = nn.ParameterDict({n: nn.Parameter(torch.tensor(float(init_b))) for n in names})
        self.exchange = _Exchange(rank, world_size)

    def temperature_bias(self, a: str, b: str) -> tuple[Tensor, Tensor]:
        name = "shared" if self.shared_temperature else pair_key(a, b)
        return self.log_t[name], self.bias[name]

    def project(self, src: str, dst: str, z: Tensor) -> Tensor:
        """``l2norm(W_src->dst z)``: ``src`` embeddings in the space it shares with ``dst``."""
        if self.pair_adapters:
            z = self.adapters[f"{src}->{dst}"](z)
        return F.normalize(z.float(), dim=-1)

    def forward(self, embeddings: dict[str, Tensor], valid: dict[str, Tensor]) -> LossOutput:
        ex = self.exchange
        local_b = None
        clean = {}
        for m in self.modalities:
            if m not in embeddings:
                continue
            z, v = embeddings[m], valid[m].bool()
            if local_b is None:
                local_b = z.shape[0]
            if z.shape[0] != local_b or v.shape[0] != local_b:
                raise ValueError(f"modality {m!r}: {z.shape[0]} rows but the batch has {local_b}")
            clean[m] = (torch.where(v[:, None], z, torch.zeros_like(z)), v)
        if local_b is None:
            raise ValueError("no embeddings given")
        offset = ex.rank * local_b
        total, n_active, per_pair = None, 0, {}
        for a, b in self.pairs:
            if a not in clean or b not in clean:
                continue
            (za, va), (zb, vb) = clean[a], clean[b]
            va_all, vb_all = ex.gather_nograd(va), ex.gather_nograd(vb)
            if not (bool(va_all.any()) and bool(vb_all.any())):
                continue  # no valid entry anywhere in the global batch: the pair contributes nothing
            t, bias = self.temperature_bias(a, b)
            u = self.project(a, b, za)
            w_all = ex.gather(self.project(b, a, zb))
            s = pair_terms(u, w_all, va, vb_all, offset, t, bias)
            n_pos, n_neg = ex.sum(s["n_pos"]), ex.sum(s["n_neg"])
            if self.balance == "siglip":
                local = (s["pos_sum"] + s["neg_sum"]) / n_pos.clamp(min=1)
            else:
                local = s["pos_sum"] / n_pos.clamp(min=1) + s["neg_sum"] / n_neg.clamp(min=1)
            per_pair[pair_key(a, b)] = ex.sum(local).detach()
            total = local if total is None else total + local
            n_active += 1
        if total is None:  # nothing valid at all: a zero loss that still has a graph
            zero = sum(p.sum() * 0 for p in self.parameters())
            return LossOutput(zero, per_pair)
        local_loss = total / n_active
        if ex.world_size == 1:
            return LossOutput(local_loss, per_pair)
        # value = the global loss; gradient = world_size x the local term (undone by DDP's averaging)
        global_value = ex.sum(local_loss)
        scaled = local_loss * ex.world_size
        return LossOutput(scaled - scaled.detach() + global_value, per_pair)
