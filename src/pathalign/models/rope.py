"""2D axial rotary position embedding (RoPE) as pure functions.

Conventions pinned down by the published EXAONE Path 2.5 slide encoder
(``shared/reference/README.md``):

* per head dim ``D_h`` there are ``D_h/4`` periods ``p_k = base^(2k/(D_h/2))``;
* the position of a patch is ``(coord + u/2) / u`` per axis (``u`` = 256 level-0 px);
* ``angle = 2*pi*position / p_k``; the vector ``[x-angles, y-angles]`` (``D_h/2``) is tiled
  twice to ``D_h`` and applied as ``x*cos + rotate_half(x)*sin``.

Angles are formed in float64 and reduced before the cosine, so that a shift of a fragment by
a whole number of units changes the attention scores only by float32 rounding of the rotated
vectors, whatever the absolute coordinate. The tables are built on the device of the positions
(the packed batch's); float64 is used only for the ``[N, 2, K]`` angles and their cosines, the
``[N, D_h]`` tables are float32.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor


def rope_periods(head_dim: int, base: float) -> Tensor:
    """Periods ``base^(2k/(D_h/2))`` for ``k < D_h/4`` (float32, shape ``[D_h/4]``)."""
    if head_dim % 4:
        raise ValueError(f"2D RoPE needs a head dim divisible by 4, got {head_dim}")
    k = torch.arange(head_dim // 4, dtype=torch.float64)
    return (base ** (2.0 * k / (head_dim // 2))).to(torch.float32)


def rope_positions(coords: Tensor, unit: float | Tensor) -> Tensor:
    """Continuous RoPE positions ``(coord + unit/2) / unit`` (float64 ``[N,2]``) of level-0 coords.

    ``unit`` is a float or a tensor broadcastable to ``coords`` (e.g. ``[N,1]``, one unit per slide).
    """
    return (coords.to(torch.float64) + unit / 2.0) / unit


def rope_cos_sin(positions: Tensor, periods: Tensor) -> tuple[Tensor, Tensor]:
    """Cosine and sine tables for 2D axial RoPE.

    Args:
        positions: float ``[N, 2]`` (x, y) positions in RoPE units.
        periods: ``[K]`` periods, ``K = D_h/4``.

    Returns:
        ``cos, sin``: float32 ``[N, 4K]`` = ``[x-angles, y-angles]`` tiled twice.
    """
    periods = periods.to(device=positions.device, dtype=torch.float64)
    turns = positions.to(torch.float64)[:, :, None] / periods[None, None, :]  # [N,2,K]
    turns = turns - torch.floor(turns)  # exact range reduction: angle mod 2*pi
    angles = (2.0 * math.pi * turns).flatten(1)  # [N, 2K]: x-angles then y-angles
    cos, sin = angles.cos().to(torch.float32), angles.sin().to(torch.float32)
    return cos.repeat(1, 2), sin.repeat(1, 2)  # [N, 4K] = [N, D_h]: tiled twice


def rotate_half(x: Tensor) -> Tensor:
    """``[x1, x2] -> [-x2, x1]`` on the last dim."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate ``x`` (``[..., D_h]``) by tables broadcastable to it; computed in float32."""
    out = x.float() * cos + rotate_half(x.float()) * sin
    return out.to(x.dtype)
