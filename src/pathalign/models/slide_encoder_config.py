"""Configuration of the F-RoPE slide encoder and its presets (one registry, ``SLIDE_ENCODER_PRESETS``).

Kept apart from the module so that the published-weight loader (:mod:`.exaone`) can build a
config without importing the encoder.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ..registry import Registry
from .attention import ATTENTION_BACKENDS
from .layers import swiglu_hidden

POOLINGS = ("mean", "cls")


@dataclass(frozen=True)
class SlideEncoderConfig:
    """Architecture and behaviour of a :class:`SlideEncoder`.

    Attributes:
        input_dim: patch-feature dim ``C``.
        dim: token dim ``D``.
        depth: number of blocks.
        num_heads: attention heads (head dim ``D/num_heads`` must be divisible by 4).
        n_registers: register tokens after CLS.
        nope_interval: block ``i`` is NoPE when ``i % nope_interval == 0``; 0 means every block is
            NoPE (no position at all).
        fragment_mask: restrict RoPE blocks to each fragment (False: RoPE blocks attend over the slide).
        use_rope: apply rotary position in RoPE blocks (False: fragment mask without position).
        rope_base: base of the RoPE periods.
        rope_unit: RoPE unit in level-0 px (published: 256).
        rope_unit_um: if set, the unit in micrometres, converted per slide with its mpp.
        mlp_ratio / swiglu_align: SwiGLU hidden = ceil(int(ratio*dim*2/3) / align) * align.
        mlp_hidden: explicit SwiGLU hidden width (overrides ratio/align).
        layer_norm_eps: LayerNorm epsilon.
        pooling: ``"mean"`` = concat(mean raw features, mean output patch tokens) as published;
            ``"cls"`` = the output CLS token.
        dropout: dropout on attention output and MLP output (training only).
        attention_backend: ``"auto"`` or a name in ``ATTENTION_BACKENDS``.
    """

    input_dim: int = 768
    dim: int = 768
    depth: int = 6
    num_heads: int = 12
    n_registers: int = 7
    nope_interval: int = 2
    fragment_mask: bool = True
    use_rope: bool = True
    rope_base: float = 100.0
    rope_unit: float = 256.0
    rope_unit_um: float | None = None
    mlp_ratio: float = 4.0
    swiglu_align: int = 128
    mlp_hidden: int | None = None
    layer_norm_eps: float = 1e-5
    pooling: str = "mean"
    dropout: float = 0.0
    attention_backend: str = "auto"

    def __post_init__(self):
        for name in ("input_dim", "dim", "depth", "num_heads"):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"SlideEncoderConfig.{name} must be positive, got {getattr(self, name)}")
        if self.dim % self.num_heads:
            raise ValueError(f"dim {self.dim} is not divisible by num_heads {self.num_heads}")
        if (self.dim // self.num_heads) % 4:
            raise ValueError(f"head dim {self.dim // self.num_heads} must be divisible by 4 for 2D RoPE")
        if self.n_registers < 0 or self.nope_interval < 0:
            raise ValueError("n_registers and nope_interval must be >= 0")
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {self.pooling!r}")
        if self.rope_unit <= 0 or (self.rope_unit_um is not None and self.rope_unit_um <= 0):
            raise ValueError("rope units must be positive")
        if self.attention_backend != "auto":
            ATTENTION_BACKENDS.get(self.attention_backend)

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @property
    def hidden_dim(self) -> int:
        if self.mlp_hidden is not None:
            return int(self.mlp_hidden)
        return swiglu_hidden(self.dim, self.mlp_ratio, self.swiglu_align)

    @property
    def n_prefix(self) -> int:
        return 1 + self.n_registers

    @property
    def output_dim(self) -> int:
        return self.input_dim + self.dim if self.pooling == "mean" else self.dim

    def is_rope_block(self, i: int) -> bool:
        return self.nope_interval > 0 and i % self.nope_interval != 0

    def replace(self, **changes: Any) -> SlideEncoderConfig:
        """A checked copy with ``changes`` (configs are never modified in place).

        Example:
            >>> SLIDE_ENCODER_PRESETS.get("tiny").replace(input_dim=46).input_dim
            46
        """
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise ValueError(f"unknown slide-encoder setting(s) {unknown}; known: "
                             f"{sorted(f.name for f in dataclasses.fields(self))}")
        return dataclasses.replace(self, **changes)


SLIDE_ENCODER_PRESETS: Registry[SlideEncoderConfig] = Registry("slide-encoder preset")
SLIDE_ENCODER_PRESETS.register("exaone-path-2.5")(SlideEncoderConfig())
SLIDE_ENCODER_PRESETS.register("small")(SlideEncoderConfig(input_dim=768, dim=256, depth=4, num_heads=4, n_registers=4))
SLIDE_ENCODER_PRESETS.register("tiny")(SlideEncoderConfig(input_dim=768, dim=64, depth=4, num_heads=2, n_registers=2))
