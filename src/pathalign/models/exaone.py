"""Load the published EXAONE Path 2.5 slide-encoder checkpoint into a :class:`SlideEncoder`.

The architecture is read off the weights (key layout: ``shared/reference/ep25_full_keys.json``):
input dim and dim from ``patch_embed.proj``, depth from the block indices, registers from
``storage_tokens``, SwiGLU width from ``mlp.w1``, the RoPE periods from the checkpoint's own
``rope_embed.periods`` buffer, and heads = dim / (4 * len(periods)). Only ``nope_interval``
cannot be told from the weights (published: 2).
"""
from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from ..io.checkpoints import CheckpointError, read_state_dict
from .slide_encoder_config import SlideEncoderConfig

if TYPE_CHECKING:
    from .slide_encoder import SlideEncoder

_RENAMES = {"storage_tokens": "register_tokens", "rope_embed.periods": "rope_periods"}
_MARKER = "transformer."


def strip_to_transformer(sd: dict[str, Tensor], where: str = "state dict") -> dict[str, Tensor]:
    """Keys after the first ``transformer.`` (any prefix before it), renamed to pathalign's names."""
    out = {}
    for key, value in sd.items():
        if not isinstance(value, Tensor) or _MARKER not in key:
            continue
        name = key.split(_MARKER, 1)[1]
        out[_RENAMES.get(name, name)] = value
    if not out:
        raise CheckpointError(f"{where}: no key contains 'transformer.'; is this an EXAONE Path 2.5 slide encoder?")
    return out


def infer_config(sd: dict[str, Tensor], where: str = "state dict", **overrides: Any) -> SlideEncoderConfig:
    """A :class:`SlideEncoderConfig` read off pathalign-named weights ``sd``."""
    try:
        proj = sd["patch_embed.proj.weight"]
        periods = sd["rope_periods"]
        n_registers = sd["register_tokens"].shape[1]
        hidden = sd["blocks.0.mlp.w1.weight"].shape[0]
    except KeyError as e:
        raise CheckpointError(f"{where}: missing weight {e.args[0]!r}") from None
    dim, input_dim = proj.shape
    depth = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k)))
    k = periods.numel()
    if k == 0 or dim % (4 * k):
        raise CheckpointError(f"{where}: dim {dim} is not a multiple of 4 x {k} RoPE periods")
    heads = dim // (4 * k)
    base = float(periods[1]) ** (k / 1.0) if k > 1 else 100.0  # periods[1] = base^(2/(D_h/2)) = base^(1/k)
    cfg = dict(input_dim=input_dim, dim=dim, depth=depth, num_heads=heads, n_registers=n_registers,
               nope_interval=2, rope_base=round(base, 6) if math.isfinite(base) else 100.0, mlp_hidden=hidden)
    cfg.update(overrides)
    return SlideEncoderConfig(**cfg)


def load_exaone_slide_encoder(cls: type[SlideEncoder], path_or_state_dict: str | Path | Mapping[str, Tensor],
                              **overrides: Any) -> SlideEncoder:
    """Build ``cls`` from a published checkpoint (path or state dict) and load its weights, eval mode."""
    if isinstance(path_or_state_dict, (str, Path)):
        from ..io.hub import resolve_checkpoint  # a file, a snapshot folder or a Hub id (its slide-encoder/)

        path = resolve_checkpoint(path_or_state_dict, subfolder="slide-encoder", what="the EXAONE Path slide encoder")
        where = str(path)
        raw = read_state_dict(path)
    else:
        where, raw = "state dict", dict(path_or_state_dict)
    sd = strip_to_transformer(raw, where)
    cfg = infer_config(sd, where, **overrides)
    model = cls(cfg)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{where}: weights do not fit the inferred architecture "
                              f"(missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]})")
    return model.eval()
