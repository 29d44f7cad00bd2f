"""Small building blocks shared by the encoders."""
from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor, nn


def swiglu_hidden(dim: int, ratio: float = 4.0, align: int = 128) -> int:
    """SwiGLU width as published: ``int(ratio*dim*2/3)`` rounded up to a multiple of ``align``."""
    return math.ceil(int(ratio * dim * 2 / 3) / align) * align


class SwiGLU(nn.Module):
    """``w3(silu(w1 x) * w2 x)`` with biases, as published."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden)
        self.w2 = nn.Linear(dim, hidden)
        self.w3 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.w3(F.silu(self.w1(x)) * self.w2(x))


class ResidualSwiGLU(nn.Module):
    """Pre-norm residual feed-forward: ``x + dropout(SwiGLU(LayerNorm(x)))``."""

    def __init__(self, dim: int, hidden: int | None = None, dropout: float = 0.0):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.ffn = SwiGLU(dim, hidden or swiglu_hidden(dim, align=32))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.drop(self.ffn(self.norm(x)))
