"""Molecular encoders (DESIGN §4): SNP, CNV, methylation as Linear + pre-norm residual SwiGLU;
RNA as a frozen foundation model with a trainable head. One registry, ``MOLECULAR_ENCODERS``."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..registry import Registry
from .layers import ResidualSwiGLU

MOLECULAR_ENCODERS: Registry[type] = Registry("molecular encoder")


@MOLECULAR_ENCODERS.register("mlp")
class MLPEncoder(nn.Module):
    """``Linear(in, d)`` → ``depth`` pre-norm residual SwiGLU blocks → LayerNorm, with dropout.

    Args:
        in_dim: input features (after preprocessing).
        dim: output embedding dim ``d``.
        depth: residual SwiGLU blocks.
        dropout: dropout on the input projection and inside the blocks.
    """

    def __init__(self, in_dim: int, dim: int, depth: int = 1, dropout: float = 0.1):
        super().__init__()
        self.in_dim, self.dim = in_dim, dim
        self.proj = nn.Linear(in_dim, dim)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.Sequential(*[ResidualSwiGLU(dim, dropout=dropout) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.blocks(self.drop(self.proj(x))))


@MOLECULAR_ENCODERS.register("frozen_fm")
class FrozenFMEncoder(nn.Module):
    """A frozen foundation model (``encode(x) -> [B, fm_dim]``) followed by a trainable :class:`MLPEncoder` head."""

    def __init__(self, foundation: nn.Module, dim: int, depth: int = 1, dropout: float = 0.1):
        super().__init__()
        self.foundation = foundation.eval()
        for p in self.foundation.parameters():
            p.requires_grad_(False)
        self.in_dim = foundation.config.n_genes
        self.head = MLPEncoder(foundation.config.dim, dim, depth, dropout)
        self.dim = dim

    def train(self, mode: bool = True):
        super().train(mode)
        self.foundation.eval()  # always frozen
        return self

    def forward(self, x: Tensor) -> Tensor:
        with torch.no_grad():
            z = self.foundation.encode(x[:, : self.in_dim])  # missing-value indicator columns, if any, are not FM input
        return self.head(z)
