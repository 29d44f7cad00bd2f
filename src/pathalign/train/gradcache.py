"""Gradient caching (GradCache, Gao et al. 2021): a contrastive batch larger than accelerator memory.

The sigmoid loss couples every pair of patients in the global batch, so the batch cannot be
split into independent pieces. It can be split in two passes:

1. every micro-batch through the encoders **without a graph** → embeddings ``[B, d]``;
2. the loss on all embeddings of the (all-gathered) global batch, backward to the pair heads
   and to the embeddings themselves (``∂L/∂z``, cached);
3. every micro-batch through the encoders again, **with** a graph, and backward of
   ``Σ z·(∂L/∂z)`` — the chain rule, one micro-batch at a time.

Parameter gradients equal those of one backward through the whole batch; memory is that of one
micro-batch plus the ``[B, d]`` embeddings. Randomness is replayed: the torch RNG state (CPU and
the device's) is saved before each micro-batch in pass 1 and restored before the same micro-batch
in pass 3, so dropout masks are the same in both passes (token subsets and modality dropout are
chosen by the data pipeline, before either pass).

Micro-batches are cut from the local batch in order, by a row count and optionally a token
budget (patches + prefix per slide), so slides of very different lengths pack into micro-batches
of similar cost; packing is variable-length, so no padding is ever computed.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from ..models.siglip import LossOutput

Embeddings = dict[str, Tensor]


def row_tokens(batch: dict, n_prefix: int = 0) -> list[int]:
    """Tokens each row of ``batch`` brings to the slide encoder (0 for a row without a slide; a patient-level
    row's slides together)."""
    b = len(next(iter(batch["valid"].values())))
    tokens = [0] * b
    for r, slide in zip(batch.get("slide_rows", torch.zeros(0, dtype=torch.long)).tolist(), batch.get("slides", [])):
        if isinstance(slide, list):  # patient level: the patient's slides, one prefix
            tokens[r] = sum(int(s[0].shape[0]) for s in slide) + n_prefix
        else:
            tokens[r] = int(slide[0].shape[0]) + n_prefix
    return tokens


def plan_micro_batches(tokens: list[int], micro_batch: int, token_budget: int | None = None) -> list[tuple[int, int]]:
    """Consecutive row ranges ``[(start, stop), ...]`` with at most ``micro_batch`` rows and, when given,
    at most ``token_budget`` tokens each (a single row longer than the budget gets a micro-batch alone).

    Args:
        tokens: tokens per row (:func:`row_tokens`).
        micro_batch: rows per micro-batch (>= 1).
        token_budget: optional token cap per micro-batch.
    """
    if micro_batch < 1:
        raise ValueError(f"micro_batch must be >= 1, got {micro_batch}")
    ranges, start, used = [], 0, 0
    for r, t in enumerate(tokens):
        full_rows = r - start >= micro_batch
        over = token_budget is not None and r > start and used + t > token_budget
        if full_rows or over:
            ranges.append((start, r))
            start, used = r, 0
        used += t
    if start < len(tokens):
        ranges.append((start, len(tokens)))
    return ranges


def slice_batch(batch: dict, start: int, stop: int) -> dict:
    """Rows ``[start, stop)`` of a training batch (molecular tensors, validity, slides, ids)."""
    out = {}
    for k, v in batch.items():
        if k == "valid":
            out[k] = {m: x[start:stop] for m, x in v.items()}
        elif k == "patients":
            out[k] = v[start:stop]
        elif isinstance(v, Tensor) and k != "slide_rows" and v.ndim >= 1:
            out[k] = v[start:stop]  # molecular inputs [B, d_in]
        elif k not in ("slides", "slide_rows", "slide_ids"):
            out[k] = v
    if "slides" in batch:
        rows = batch["slide_rows"].tolist()
        keep = [i for i, r in enumerate(rows) if start <= r < stop]
        out["slides"] = [batch["slides"][i] for i in keep]
        out["slide_rows"] = torch.tensor([rows[i] - start for i in keep], dtype=torch.long)
        if "slide_ids" in batch:
            out["slide_ids"] = [batch["slide_ids"][i] for i in keep]
    return out


class _RNG:
    """Snapshot / restore of the torch RNG streams a forward pass draws from (CPU and ``device``)."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.device = device

    def get(self) -> tuple[Tensor, Tensor | None]:
        return torch.get_rng_state(), (torch.cuda.get_rng_state(self.device) if self.cuda else None)

    def set(self, state: tuple[Tensor, Tensor | None]) -> None:
        torch.set_rng_state(state[0])
        if self.cuda:
            torch.cuda.set_rng_state(state[1], self.device)


def gradcache_step(embed: Callable[[dict], tuple[Embeddings, Embeddings]], loss_from_embeddings: Callable,
                   micro_batches: list[dict], device: torch.device | str = "cpu") -> LossOutput:
    """Forward and backward of one step in micro-batches; parameter ``.grad`` as one full-batch backward.

    Args:
        embed: ``micro_batch -> (embeddings {m: [b, d]}, valid {m: [b]})`` with gradients to the encoders.
        loss_from_embeddings: ``(embeddings, valid) -> LossOutput`` (pair heads + loss, all-gathered).
        micro_batches: consecutive pieces of the local batch (:func:`slice_batch`).
        device: where the model runs (whose RNG is replayed).

    Returns:
        The loss output of the whole batch (its ``loss`` already back-propagated).
    """
    rng = _RNG(torch.device(device))
    states, parts, valids = [], [], []
    with torch.no_grad():  # pass 1: embeddings only, no graph
        for mb in micro_batches:
            states.append(rng.get())
            emb, valid = embed(mb)
            parts.append({m: z.detach() for m, z in emb.items()})
            valids.append(valid)
    end_state = rng.get()
    mods = list(parts[0])
    cat = {m: torch.cat([p[m] for p in parts]).requires_grad_(True) for m in mods}  # [B, d] leaves
    valid = {m: torch.cat([v[m] for v in valids]) for m in valids[0]}
    out = loss_from_embeddings(cat, valid)  # pass 2: loss on the whole batch
    out.loss.backward()  # gradients of the pair heads, and dL/dz into cat[m].grad
    grads = {m: (cat[m].grad if cat[m].grad is not None else torch.zeros_like(cat[m])) for m in mods}
    start = 0
    for mb, state, part in zip(micro_batches, states, parts):  # pass 3: replay each micro-batch with its gradient
        n = len(next(iter(part.values())))
        rng.set(state)
        emb, _ = embed(mb)
        surrogate = sum((emb[m] * grads[m][start:start + n].to(emb[m].dtype)).sum() for m in mods if emb[m].requires_grad)
        if isinstance(surrogate, Tensor):
            surrogate.backward()
        start += n
    rng.set(end_state)
    return out


def allreduce_gradients(params: Iterable[nn.Parameter], world_size: int) -> None:
    """Average ``.grad`` over ranks (what DDP does), for steps run outside DDP's hooks.

    A parameter without a gradient on some rank counts as zero there; one without a gradient on
    every rank keeps ``grad = None`` (so the optimiser skips it, as in one process).
    """
    if world_size <= 1:
        return
    import torch.distributed as dist

    params = [p for p in params if p.requires_grad]
    if not params:
        return
    has = torch.tensor([p.grad is not None for p in params], dtype=torch.float32, device=params[0].device)
    dist.all_reduce(has)
    live = [p for p, h in zip(params, has.tolist()) if h > 0]
    for p in live:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    if not live:
        return
    flat = torch.cat([p.grad.reshape(-1) for p in live])
    dist.all_reduce(flat)
    flat /= world_size
    offset = 0
    for p in live:
        n = p.numel()
        p.grad.copy_(flat[offset:offset + n].view_as(p.grad))
        offset += n
