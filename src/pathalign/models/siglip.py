"""Multimodal SigLIP loss with ValidPair masking (DESIGN §4): a function of the pair projections.

The pair heads (``W_ij``, ``t_ij``, ``b_ij``) are part of the model (:mod:`.pair_heads`); the loss
holds no parameters. For every unordered pair {i, j} of modalities: ``u = l2norm(W_ij z_i)``, ``w = l2norm(W_ji z_j)``,
``logits = exp(t_ij) u wᵀ + b_ij``, labels +1 on the diagonal (same patient) and -1 elsewhere,
mask ``V = v_i ⊗ v_j``; ``loss_ij = -Σ V·logsigmoid(labels·logits) / max(1, #valid positives)``
(``balance="siglip"``) or mean over valid positives + mean over valid negatives (``"pos_neg"``);
the total is the mean over pairs with any valid entry. Invalid embeddings are replaced by zeros
(by the pair heads) *before* anything is computed from them, so their values cannot matter and
their gradients are exactly zero.

Distributed (``world_size > 1``): the column side ``w`` and its validity are all-gathered; the
gather's backward sums the gradient from every rank into the owner's rows (reduce-scatter).
Each rank computes the rows it owns; ``.loss`` is the global loss on every rank, and the
backward pass is scaled by ``world_size`` so that after DDP's gradient averaging every
gradient equals the single-process gradient on the concatenated global batch. The local term
(:func:`pair_terms`) and the exchange (:class:`_Exchange`) are kept apart.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .pair_heads import PairHeads, PairProjection, pair_key  # noqa: F401  (PairHeads: for the docstring example)

BALANCES = ("siglip", "pos_neg")


class LossOutput:
    """The loss of a batch, computed without reading anything back from the device.

    Attributes:
        loss: scalar to backpropagate (its value is the global loss).
        values: every pair's detached (global) value, NaN for a pair with no valid entry in the batch.
        active: bool ``[n_pairs]`` (order of ``values``): which pairs had a valid entry.
        per_pair: detached values of the active pairs only; the first read of it reads ``active``
            from the device (one host read), so a training step that logs ``values`` never does.
    """

    def __init__(self, loss: Tensor, per_pair: dict[str, Tensor] | None = None, *,
                 values: dict[str, Tensor] | None = None, active: Tensor | None = None):
        self.loss = loss
        self.values = dict(values if values is not None else (per_pair or {}))
        self.active = active
        self._per_pair = per_pair if per_pair is not None else (None if active is not None else {})

    @property
    def per_pair(self) -> dict[str, Tensor]:
        if self._per_pair is None:
            flags = self.active.tolist() if len(self.values) else []
            self._per_pair = {k: v for (k, v), a in zip(self.values.items(), flags) if a}
        return self._per_pair


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
    """All-pairwise sigmoid contrastive loss over the pair projections of a batch; holds no parameters.

    The pair heads (adapters, temperatures, biases) belong to the model
    (:class:`~pathalign.models.pair_heads.PairHeads`); this is a function of what they output.

    Args:
        balance: ``"siglip"`` or ``"pos_neg"``.
        rank, world_size: distributed position (``world_size > 1`` needs ``torch.distributed``
            initialised; every rank must call the loss with the same pairs).

    Example:
        >>> heads = PairHeads({"wsi": 8, "rna": 6}, proj_dim=4)
        >>> loss_fn = MultimodalSigLIPLoss()
        >>> z = {"wsi": torch.randn(5, 8), "rna": torch.randn(5, 6)}
        >>> v = {m: torch.ones(5, dtype=torch.bool) for m in z}
        >>> out = loss_fn(heads(z, v))
        >>> sorted(out.per_pair)
        ['wsi-rna']
    """

    def __init__(self, balance: str = "siglip", rank: int = 0, world_size: int = 1):
        super().__init__()
        if balance not in BALANCES:
            raise ValueError(f"balance must be one of {BALANCES}, got {balance!r}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
        self.balance = balance
        self.exchange = _Exchange(rank, world_size)

    @property
    def rank(self) -> int:
        return self.exchange.rank

    @property
    def world_size(self) -> int:
        return self.exchange.world_size

    def forward(self, pairs: Sequence[PairProjection]) -> LossOutput:
        """The loss of a batch's pair projections (the output of ``PairHeads``).

        Every pair given takes part in the graph; a pair with no valid entry anywhere in the
        global batch adds exactly zero (value and gradient) and is left out of the mean and of
        ``per_pair``.
        """
        ex = self.exchange
        total, n_active, values, active = None, None, {}, []
        for p in pairs:
            local_b = p.u.shape[0]
            vb_all = ex.gather_nograd(p.valid_b)
            w_all = ex.gather(p.w)
            s = pair_terms(p.u, w_all, p.valid_a, vb_all, ex.rank * local_b, p.log_t, p.bias)
            n_pos, n_neg = ex.sum(s["n_pos"]), ex.sum(s["n_neg"])
            if self.balance == "siglip":
                local = (s["pos_sum"] + s["neg_sum"]) / n_pos.clamp(min=1)
            else:
                local = s["pos_sum"] / n_pos.clamp(min=1) + s["neg_sum"] / n_neg.clamp(min=1)
            total = local if total is None else total + local
            is_active = (n_pos + n_neg) > 0  # on the device: the counts are never read back
            active.append(is_active)
            values[p.key] = torch.where(is_active, ex.sum(local).detach(), float("nan"))
            n_active = is_active.long() if n_active is None else n_active + is_active.long()
        if total is None:  # no pair at all: a zero loss that still has a graph
            return LossOutput(torch.zeros((), requires_grad=True), {})
        flags = torch.stack(active)
        local_loss = total / n_active.clamp(min=1)
        if ex.world_size == 1:
            return LossOutput(local_loss, values=values, active=flags)
        # value = the global loss; gradient = world_size x the local term (undone by DDP's averaging)
        global_value = ex.sum(local_loss)
        scaled = local_loss * ex.world_size
        return LossOutput(scaled - scaled.detach() + global_value, values=values, active=flags)
