"""Molecular encoders (DESIGN §4): SNP, CNV, methylation as Linear + pre-norm residual SwiGLU;
RNA as a frozen foundation model with a trainable head. One registry, ``MOLECULAR_ENCODERS``, whose
entries' ``build(in_dim, dim, depth, dropout, **options)`` is how the model makes its encoders.

``input_noise`` (an option of both): Gaussian noise of that standard deviation added to the encoder's
input in training mode only (inputs are standardised, so it is in units of a feature's training SD);
a regulariser for cohorts of a few hundred patients, where the encoders otherwise memorise them."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..registry import Registry
from .layers import ResidualSwiGLU
from .rna_fm import RNAFMConfig, RNAFoundationModel

MOLECULAR_ENCODERS: Registry[type] = Registry("molecular encoder")


@MOLECULAR_ENCODERS.register("mlp")
class MLPEncoder(nn.Module):
    """``Linear(in, d)`` → ``depth`` pre-norm residual SwiGLU blocks → LayerNorm, with dropout.

    Args:
        in_dim: input features (after preprocessing).
        dim: output embedding dim ``d``.
        depth: residual SwiGLU blocks (0: a linear map, then LayerNorm).
        dropout: dropout on the input projection and inside the blocks.
        input_noise: SD of the Gaussian noise added to the input in training mode (0: none).
    """

    def __init__(self, in_dim: int, dim: int, depth: int = 1, dropout: float = 0.1, input_noise: float = 0.0):
        super().__init__()
        if input_noise < 0:
            raise ValueError(f"input_noise must be >= 0, got {input_noise}")
        self.in_dim, self.dim, self.input_noise = in_dim, dim, float(input_noise)
        self.proj = nn.Linear(in_dim, dim)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.Sequential(*[ResidualSwiGLU(dim, dropout=dropout) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)

    @classmethod
    def build(cls, in_dim: int, dim: int, depth: int = 1, dropout: float = 0.1,
              input_noise: float = 0.0) -> MLPEncoder:
        """The registry's constructor (every entry's ``build`` takes ``in_dim, dim, depth, dropout, **options``)."""
        return cls(in_dim, dim, depth, dropout, input_noise)

    def forward(self, x: Tensor) -> Tensor:
        """``[B, in_dim]`` -> ``[B, dim]``."""
        if self.training and self.input_noise > 0:
            x = x + self.input_noise * torch.randn_like(x)
        return self.norm(self.blocks(self.drop(self.proj(x))))


@MOLECULAR_ENCODERS.register("frozen_fm")
class FrozenFMEncoder(nn.Module):
    """A frozen foundation model (``encode(x) -> [B, fm_dim]``) followed by a trainable :class:`MLPEncoder` head.

    Args:
        foundation: the foundation model (its ``config.n_genes`` first input columns are its genes; any
            further columns, missing-value indicators, are not fed to it).
        dim, depth, dropout: the head (see :class:`MLPEncoder`).
    """

    def __init__(self, foundation: nn.Module, dim: int, depth: int = 1, dropout: float = 0.1,
                 input_noise: float = 0.0):
        super().__init__()
        self.foundation = foundation.eval()
        for p in self.foundation.parameters():
            p.requires_grad_(False)
        self.in_dim = foundation.config.n_genes
        self.head = MLPEncoder(foundation.config.dim, dim, depth, dropout, input_noise)
        self.dim = dim

    @classmethod
    def build(cls, in_dim: int, dim: int, depth: int = 1, dropout: float = 0.1,
              fm_config: dict | None = None, input_noise: float = 0.0) -> FrozenFMEncoder:
        """The registry's constructor: an :class:`RNAFoundationModel` from ``fm_config`` (weights loaded later)."""
        if fm_config is None:
            raise ValueError("the frozen_fm encoder needs fm_config (the RNA foundation model's config)")
        fm = RNAFoundationModel(RNAFMConfig(**fm_config))
        if in_dim < fm.config.n_genes:
            raise ValueError(f"{in_dim} input columns but the foundation model takes {fm.config.n_genes} genes")
        return cls(fm, dim, depth, dropout, input_noise)

    def train(self, mode: bool = True) -> FrozenFMEncoder:
        super().train(mode)
        self.foundation.eval()  # always frozen
        return self

    def forward(self, x: Tensor) -> Tensor:
        """``[B, in_dim]`` -> ``[B, dim]``."""
        with torch.no_grad():
            z = self.foundation.encode(x[:, : self.in_dim])  # missing-value indicator columns, if any, are not FM input
        return self.head(z)
