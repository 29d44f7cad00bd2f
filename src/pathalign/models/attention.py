"""Segment-restricted ("document-masked") attention over a packed sequence.

Every backend takes ``q, k, v`` as ``[T, H, D_h]`` and :class:`~pathalign.models.packing.Segments`
and returns ``[T, H, D_h]`` where token ``t`` attended only to the tokens of its own segment.

Backends (``ATTENTION_BACKENDS``):

* ``dense``   — one SDPA call with a boolean ``[T, T]`` mask. O(T^2) memory; the reference
  the tests compare every other backend with. Never chosen automatically.
* ``segment`` — one SDPA call per segment on 4-D ``[1, H, L, D_h]`` inputs with no mask, which
  is what lets PyTorch take its O(L)-memory fused kernel on CPU and CUDA. Segments of equal
  length are batched into one call. Default on CPU, and on CUDA for float32.
* ``nested``  — SDPA on a nested (jagged) tensor. Works everywhere; slow on CPU.
* ``varlen``  — flash-attention varlen kernel (``flash_attn`` when installed, else PyTorch's own
  ``torch.nn.attention.varlen``). CUDA, fp16/bf16 only. Default on CUDA for half precision.
* ``flex``    — compiled FlexAttention with a block-sparse document mask. CUDA.

``choose_backend`` picks automatically; ``PATHALIGN_ATTENTION=<name>`` or the encoder config
overrides.
"""
from __future__ import annotations

import functools
import os
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel

from ..registry import Registry
from .packing import Segments, to_device

AttentionFn = Callable[[Tensor, Tensor, Tensor, Segments], Tensor]
ATTENTION_BACKENDS: Registry[AttentionFn] = Registry("attention backend")


def _heads_first(x: Tensor) -> Tensor:
    return x.transpose(0, 1).unsqueeze(0)  # [T,H,Dh] -> [1,H,T,Dh]


@ATTENTION_BACKENDS.register("dense")
def dense_attention(q: Tensor, k: Tensor, v: Tensor, segments: Segments) -> Tensor:
    """Reference: full ``[T, T]`` boolean mask (test use only)."""
    ids = segments.ids(q.device)
    mask = ids[:, None] == ids[None, :]  # [T, T]
    out = F.scaled_dot_product_attention(_heads_first(q), _heads_first(k), _heads_first(v), attn_mask=mask)
    return out[0].transpose(0, 1)  # [1,H,T,Dh] -> [T,H,Dh]


def _length_groups(segments: Segments) -> list[tuple[int, list[int]]]:
    """Segments grouped by length: ``[(length, [segment index, ...]), ...]`` (cached)."""
    key = "length_groups"
    if key not in segments._cache:
        groups: dict[int, list[int]] = {}
        for i, n in enumerate(segments.lengths):
            groups.setdefault(n, []).append(i)
        segments._cache[key] = sorted(groups.items())
    return segments._cache[key]


def _segment_plan(segments: Segments) -> list[tuple[int, int, list[int]]]:
    """Calls of the segment backend: ``(length, group size, starts)`` per group of equal-length segments (cached)."""
    key = "segment_plan"
    if key not in segments._cache:
        offsets = np.concatenate([[0], np.cumsum(segments.lengths)]).tolist()  # host numbers
        segments._cache[key] = [(length, len(members), [offsets[m] for m in members])
                                for length, members in _length_groups(segments)]
    return segments._cache[key]


@ATTENTION_BACKENDS.register("segment")
def segment_attention(q: Tensor, k: Tensor, v: Tensor, segments: Segments) -> Tensor:
    """One unmasked 4-D SDPA call per group of equal-length segments; no ``[T, T]`` tensor.

    Outputs are gathered once into sequence order (``index_select``), so the backward pass is
    one scatter-add rather than a copy per segment.
    """
    if len(segments.lengths) == 1:
        return F.scaled_dot_product_attention(_heads_first(q), _heads_first(k), _heads_first(v))[0].transpose(0, 1)
    indices, inverse = _segment_indices(segments, q.device)
    outs = []
    for (length, g, starts), idx in zip(_segment_plan(segments), indices):
        if g == 1:
            sl = slice(starts[0], starts[0] + length)
            o = F.scaled_dot_product_attention(_heads_first(q[sl]), _heads_first(k[sl]), _heads_first(v[sl]))
            outs.append(o[0].transpose(0, 1))  # [L,H,Dh]
            continue

        def gather(x: Tensor) -> Tensor:
            return x.index_select(0, idx).view(g, length, *x.shape[1:]).transpose(1, 2)  # [G*L,H,Dh] -> [G,H,L,Dh]

        o = F.scaled_dot_product_attention(gather(q), gather(k), gather(v))  # [G,H,L,Dh]
        outs.append(o.transpose(1, 2).reshape(g * length, *q.shape[1:]))
    return torch.cat(outs).index_select(0, inverse)


def _segment_indices(segments: Segments, device: torch.device) -> tuple[list[Tensor | None], Tensor]:
    """Per call of the segment backend, the gathered rows (``None`` for a lone segment, a slice), and the
    inverse permutation back to sequence order; built on the host once, copied once per device (cached)."""
    key = ("segment_indices", str(device))
    if key not in segments._cache:
        indices, order = [], []
        for length, g, starts in _segment_plan(segments):
            index = (torch.tensor(starts)[:, None] + torch.arange(length)[None, :]).reshape(-1)  # [G*L]
            indices.append(None if g == 1 else to_device(index, device))
            order.append(index)
        perm = torch.cat(order)  # sequence position of each row of cat(outs)
        inverse = torch.empty_like(perm)
        inverse[perm] = torch.arange(len(perm))
        segments._cache[key] = (indices, to_device(inverse, device))
    return segments._cache[key]


@ATTENTION_BACKENDS.register("nested")
def nested_attention(q: Tensor, k: Tensor, v: Tensor, segments: Segments) -> Tensor:
    """SDPA over a jagged nested tensor (one component per segment)."""
    offsets = segments.offsets(q.device).long()

    def jag(x: Tensor) -> Tensor:
        nt = torch.nested.nested_tensor_from_jagged(x.contiguous(), offsets=offsets)  # [S, j, H, Dh]
        return nt.transpose(1, 2)  # [S, H, j, Dh]

    if q.device.type == "cpu":  # CPU nested SDPA has only the math kernel (and probes cuDNN otherwise)
        with sdpa_kernel([SDPBackend.MATH]):
            out = F.scaled_dot_product_attention(jag(q), jag(k), jag(v))
    else:
        out = F.scaled_dot_product_attention(jag(q), jag(k), jag(v))
    return out.transpose(1, 2).values()  # [T, H, Dh]


def _flash_attn_varlen():
    try:
        from flash_attn import flash_attn_varlen_func  # type: ignore[import-not-found]

        return flash_attn_varlen_func
    except ImportError:
        return None


@ATTENTION_BACKENDS.register("varlen")
def varlen_attention(q: Tensor, k: Tensor, v: Tensor, segments: Segments) -> Tensor:
    """Flash-attention varlen over cumulative offsets (CUDA, fp16/bf16)."""
    if q.device.type != "cuda" or q.dtype not in (torch.float16, torch.bfloat16):
        raise RuntimeError(f"the 'varlen' attention backend needs fp16/bf16 on CUDA, got {q.dtype} on {q.device}")
    cu = segments.offsets(q.device)
    fn = _flash_attn_varlen()
    if fn is not None:
        return fn(q, k, v, cu, cu, segments.max_len, segments.max_len)
    from torch.nn.attention.varlen import varlen_attn

    return varlen_attn(q, k, v, cu, cu, segments.max_len, segments.max_len)


@functools.cache
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=True)


@ATTENTION_BACKENDS.register("flex")
def flex_attention_backend(q: Tensor, k: Tensor, v: Tensor, segments: Segments) -> Tensor:
    """Compiled FlexAttention with a block-sparse document mask (CUDA)."""
    from torch.nn.attention.flex_attention import create_block_mask

    key = ("block_mask", str(q.device))
    if key not in segments._cache:
        ids = segments.ids(q.device)

        def same_segment(b: Tensor, h: Tensor, qi: Tensor, ki: Tensor) -> Tensor:
            return ids[qi] == ids[ki]

        t = segments.total
        segments._cache[key] = create_block_mask(same_segment, None, None, t, t, device=q.device)
    out = _compiled_flex()(_heads_first(q), _heads_first(k), _heads_first(v), block_mask=segments._cache[key])
    return out[0].transpose(0, 1)


def varlen_available(device: torch.device) -> bool:
    if device.type != "cuda":
        return False
    if _flash_attn_varlen() is not None:
        return True
    try:
        from torch.nn.attention.varlen import varlen_attn  # noqa: F401
    except ImportError:
        return False
    return True


def choose_backend(requested: str, device: torch.device, dtype: torch.dtype) -> str:
    """Resolve ``requested`` (a backend name or ``"auto"``) for tensors on ``device`` of ``dtype``.

    ``PATHALIGN_ATTENTION`` in the environment overrides ``"auto"``. Auto never picks ``dense``.
    """
    if requested == "auto":
        requested = os.environ.get("PATHALIGN_ATTENTION", "auto")
    if requested != "auto":
        ATTENTION_BACKENDS.get(requested)  # raises with the known names
        return requested
    if device.type == "cuda" and dtype in (torch.float16, torch.bfloat16) and varlen_available(device):
        return "varlen"
    return "segment"
