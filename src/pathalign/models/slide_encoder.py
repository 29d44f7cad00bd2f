"""The F-RoPE slide encoder (DESIGN §4): patch features -> slide embedding.

Blocks alternate between NoPE (global attention over each slide, no position) and RoPE
(2D axial rotary position from the level-0 coordinates, attention restricted to each tissue
fragment, prefix tokens their own segment). A batch of slides is packed into one sequence
(:mod:`.packing`) and attention runs segment by segment (:mod:`.attention`), so no default
path builds anything of size T x T.

Patient level (:meth:`SlideEncoder.encode_patients`): a patient's slides are packed as one sequence
with one prefix; RoPE blocks stay within each (slide, fragment), NoPE blocks read all of the
patient's slides together, and the embedding pools over the patient's patches. A one-slide patient
gives exactly that slide's slide-level outputs.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
import torch.utils.checkpoint
from torch import Tensor, nn

from .attention import ATTENTION_BACKENDS, choose_backend
from .exaone import load_exaone_slide_encoder
from .layers import SwiGLU
from .packing import PackedSlides, Segments, SlideInputError, pack_patients, pack_slides
from .rope import apply_rope, rope_cos_sin, rope_periods, rope_positions
from .slide_encoder_config import POOLINGS, SLIDE_ENCODER_PRESETS, SlideEncoderConfig

__all__ = ["POOLINGS", "SLIDE_ENCODER_PRESETS", "SlideEncoder", "SlideEncoderConfig", "SlideInputError"]

SlideInput = tuple  # (features [N, C], coords [N, 2] level-0 px, fragment [N] or None)

class SegmentSelfAttention(nn.Module):
    """Multi-head self-attention over a packed ``[T, D]`` sequence, within segments."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def qkv_rotated(self, x: Tensor, rope: tuple[Tensor, Tensor] | None) -> tuple[Tensor, Tensor, Tensor]:
        """Queries, keys and values ``[T, H, D_h]`` of ``x`` ``[T, D]``, q and k rotated when ``rope`` is given."""
        t, d = x.shape
        q, k, v = self.qkv(x).view(t, 3, self.num_heads, d // self.num_heads).unbind(1)  # each [T,H,Dh]
        if rope is not None:
            cos, sin = rope  # [T, Dh], identity rows for prefix tokens
            q = apply_rope(q, cos[:, None, :], sin[:, None, :])
            k = apply_rope(k, cos[:, None, :], sin[:, None, :])
        return q, k, v

    def forward(self, x: Tensor, segments: Segments, backend: str, rope: tuple[Tensor, Tensor] | None) -> Tensor:
        """Attention output ``[T, D]`` of ``x`` ``[T, D]`` within ``segments``."""
        q, k, v = self.qkv_rotated(x, rope)
        out = ATTENTION_BACKENDS.get(backend)(q, k, v, segments)  # [T,H,Dh]
        return self.proj(out.reshape(x.shape))


class Block(nn.Module):
    """Pre-norm transformer block: attention then SwiGLU, each with a residual."""

    def __init__(self, cfg: SlideEncoderConfig, rope_block: bool):
        super().__init__()
        self.rope_block = rope_block
        self.norm1 = nn.LayerNorm(cfg.dim, eps=cfg.layer_norm_eps)
        self.attn = SegmentSelfAttention(cfg.dim, cfg.num_heads)
        self.norm2 = nn.LayerNorm(cfg.dim, eps=cfg.layer_norm_eps)
        self.mlp = SwiGLU(cfg.dim, cfg.hidden_dim)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor, segments: Segments, backend: str, rope: tuple[Tensor, Tensor] | None) -> Tensor:
        """``[T, D]`` -> ``[T, D]``."""
        x = x + self.drop(self.attn(self.norm1(x), segments, backend, rope))
        return x + self.drop(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    """Patch features ``[N, C]`` -> tokens ``[N, D]``: Linear then LayerNorm."""

    def __init__(self, input_dim: int, dim: int, eps: float):
        super().__init__()
        self.proj = nn.Linear(input_dim, dim)
        self.norm = nn.LayerNorm(dim, eps=eps)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.proj(x))


class SlideEncoder(nn.Module):
    """F-RoPE aggregator of patch features into a slide embedding.

    Gradients follow the caller's autograd mode (wrap inference in ``torch.inference_mode()``).

    Args:
        config: the architecture (default: the published EXAONE Path 2.5 one).
        **overrides: fields of ``config`` to change.

    Example:
        >>> enc = SlideEncoder.from_preset("tiny", input_dim=16).eval()
        >>> feats, coords = torch.randn(10, 16), torch.randint(0, 4096, (10, 2))
        >>> with torch.inference_mode():
        ...     enc([(feats, coords, None)]).shape
        torch.Size([1, 80])
    """

    def __init__(self, config: SlideEncoderConfig | None = None, **overrides: Any):
        super().__init__()
        cfg = config or SlideEncoderConfig()
        if overrides:
            cfg = cfg.replace(**overrides)
        self.config = cfg
        self.patch_embed = PatchEmbed(cfg.input_dim, cfg.dim, cfg.layer_norm_eps)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.dim))
        self.register_tokens = nn.Parameter(torch.zeros(1, cfg.n_registers, cfg.dim))
        self.register_buffer("rope_periods", rope_periods(cfg.head_dim, cfg.rope_base), persistent=True)
        self.blocks = nn.ModuleList(Block(cfg, cfg.is_rope_block(i)) for i in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.dim, eps=cfg.layer_norm_eps)
        # training option, not architecture: recompute each block in the backward pass instead of
        # keeping its activations (memory of one block instead of depth blocks; ~1 extra forward)
        self.checkpoint_activations = False
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        nn.init.trunc_normal_(self.register_tokens, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> "SlideEncoder":
        """A randomly initialised encoder of preset ``name`` (``SLIDE_ENCODER_PRESETS``)."""
        return cls(SLIDE_ENCODER_PRESETS.get(name), **overrides)

    @classmethod
    def from_exaone_path(cls, path_or_state_dict: str | Path | Mapping[str, Tensor], **overrides: Any) -> "SlideEncoder":
        """Load the published EXAONE Path 2.5 slide encoder (eval mode); see :mod:`.exaone`.

        Example:
            >>> enc = SlideEncoder.from_exaone_path("slide_encoder.safetensors")  # doctest: +SKIP
        """
        return load_exaone_slide_encoder(cls, path_or_state_dict, **overrides)

    def set_attention_backend(self, backend: str) -> "SlideEncoder":
        """Use attention ``backend`` (``"auto"`` or a name in ``ATTENTION_BACKENDS``) from now on; returns ``self``.

        The config is replaced by a checked copy, never modified in place.
        """
        self.config = self.config.replace(attention_backend=backend)
        return self

    # ------------------------------------------------------------------ packing
    def _rope_units(self, mpps: Sequence[float | None]) -> list[float]:
        cfg = self.config
        if cfg.rope_unit_um is None:
            return [cfg.rope_unit] * len(mpps)
        units = []
        for s, mpp in enumerate(mpps):
            if mpp is None or not mpp > 0:
                raise SlideInputError(f"slide {s}: rope_unit_um={cfg.rope_unit_um} needs the slide's mpp, got {mpp}")
            units.append(cfg.rope_unit_um / float(mpp))
        return units

    def pack(self, slides: Sequence[tuple], mpps: Sequence[float | None] | None = None,
             names: Sequence[str] | None = None) -> PackedSlides:
        """Validate and pack ``slides`` (see :func:`~pathalign.models.packing.pack_slides`)."""
        mpps = list(mpps) if mpps is not None else [None] * len(slides)
        if len(mpps) != len(slides):
            raise SlideInputError(f"{len(slides)} slides but {len(mpps)} mpp values")
        return pack_slides(slides, self.config.n_prefix, self.config.input_dim, self._rope_units(mpps), names)

    def pack_patients(self, patients: Sequence[Sequence[tuple]],
                      mpps: Sequence[Sequence[float | None]] | None = None,
                      names: Sequence[Sequence[str]] | None = None) -> PackedSlides:
        """Validate and pack ``patients`` (see :func:`~pathalign.models.packing.pack_patients`); ``mpps``
        per patient per slide (the RoPE unit stays each slide's own)."""
        mpps = [list(m) for m in mpps] if mpps is not None else [[None] * len(p) for p in patients]
        if len(mpps) != len(patients) or any(len(m) != len(p) for m, p in zip(mpps, patients)):
            raise SlideInputError("give one mpp per slide of every patient")
        units = [self._rope_units(m) for m in mpps]
        return pack_patients(patients, self.config.n_prefix, self.config.input_dim, units, names)

    def _rope_tables(self, packed: PackedSlides, device) -> tuple[Tensor, Tensor]:
        """cos/sin ``[T, D_h]`` over the whole sequence, built on ``device``; prefix rows are the identity rotation."""
        t, dh = packed.total, self.config.head_dim
        packed.to(device)
        pos = rope_positions(packed.coords, packed.patch_unit_per_token()[:, None])  # [P, 2] float64
        cos_p, sin_p = rope_cos_sin(pos, self.rope_periods.detach())  # [P, Dh] float32
        cos = torch.ones(t, dh, device=device)
        sin = torch.zeros(t, dh, device=device)
        cos[packed.patch_slots] = cos_p
        sin[packed.patch_slots] = sin_p
        return cos, sin

    # ------------------------------------------------------------------ forward
    def run_blocks(self, packed: PackedSlides,
                   stop: int | None = None) -> tuple[Tensor, tuple[Tensor, Tensor] | None, Segments]:
        """Embed the packed sequence and run the blocks before ``stop`` (default: all of them).

        Returns:
            ``(x [T, D] before block stop, rope tables or None, the segments of the RoPE blocks)``.
        """
        cfg = self.config
        device = self.cls_token.device
        packed.to(device)
        feats = packed.features.to(self.patch_embed.proj.weight.dtype)
        s = len(packed.n_patches)
        dtype = torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) else feats.dtype
        backend = choose_backend(cfg.attention_backend, device, dtype)
        prefix = torch.cat([self.cls_token, self.register_tokens], dim=1).expand(s, -1, -1)  # [S, P, D]
        patch_tokens = self.patch_embed(feats)  # [Np, D]
        x = patch_tokens.new_empty(packed.total, cfg.dim)
        x[packed.patch_slots] = patch_tokens
        x[packed.prefix_slots.reshape(-1)] = prefix.reshape(-1, cfg.dim).to(x.dtype)  # [S*P, D]
        rope = self._rope_tables(packed, device) if cfg.use_rope and any(b.rope_block for b in self.blocks) else None
        rope_segments = packed.fragment_segments if cfg.fragment_mask else packed.rope_free_segments
        recompute = self.checkpoint_activations and self.training and torch.is_grad_enabled()
        for blk in self.blocks[:stop]:
            args = (rope_segments, backend, rope) if blk.rope_block else (packed.global_segments, backend, None)
            if recompute:  # the RNG state is saved and replayed, so dropout masks match
                x = torch.utils.checkpoint.checkpoint(blk, x, *args, use_reentrant=False)
            else:
                x = blk(x, *args)
        return x, rope, rope_segments

    def forward_packed(self, packed: PackedSlides) -> dict[str, Tensor]:
        """Run the encoder on a packed batch.

        Returns:
            dict with ``tokens`` ``[P, D]`` (output patch tokens, packed order), ``cls`` ``[S, D]``,
            ``slide_embedding`` ``[S, output_dim]``.
        """
        cfg = self.config
        device = self.cls_token.device
        s = len(packed.n_patches)
        x, _, _ = self.run_blocks(packed)
        x = self.norm(x)
        tokens = x[packed.patch_slots]  # [Np, D]
        cls = x[packed.prefix_slots[:, 0]]  # [S, D]
        if cfg.pooling == "cls":
            slide = cls
        else:
            slide_of = packed.slide_of  # [Np], on the device (PackedSlides.to)
            counts = torch.zeros(s, device=device).index_add_(0, slide_of, torch.ones_like(slide_of, dtype=torch.float32))
            mean_tok = torch.zeros(s, cfg.dim, device=device, dtype=tokens.dtype).index_add_(0, slide_of, tokens)
            mean_feat = torch.zeros(s, cfg.input_dim, device=device, dtype=torch.float32).index_add_(0, slide_of, packed.features.float())
            slide = torch.cat([mean_feat, mean_tok.float()], dim=1) / counts[:, None]
        return {"tokens": tokens, "cls": cls, "slide_embedding": slide}

    def forward(self, slides: Sequence[SlideInput], mpps: Sequence[float | None] | None = None,
                names: Sequence[str] | None = None) -> Tensor:
        """Slide embeddings ``[S, output_dim]`` of several slides, in one packed pass.

        Args:
            slides: ``[(features [N,C], coords [N,2] level-0 px, fragment [N] or None), ...]``.
            mpps: optional per-slide µm/px (needed only with ``rope_unit_um``).
            names: optional slide names used in error messages.
        """
        return self.forward_packed(self.pack(slides, mpps, names))["slide_embedding"]

    def encode_batch(self, slides: Sequence[SlideInput], mpps: Sequence[float | None] | None = None,
                     names: Sequence[str] | None = None) -> list[dict[str, Tensor]]:
        """Encode several slides in one packed pass, with patch tokens and CLS.

        Gradients follow the caller's autograd mode (use ``torch.inference_mode()`` for inference).

        Args:
            slides: ``[(features [N,C], coords [N,2] level-0 px, fragment [N] or None), ...]``.
            mpps: optional per-slide µm/px (needed only with ``rope_unit_um``).
            names: optional slide names used in error messages.

        Returns:
            One dict per slide: ``slide_embedding`` ``[output_dim]``, ``patch_tokens`` ``[N, D]``
            in input order, ``cls`` ``[D]``.
        """
        packed = self.pack(slides, mpps, names)
        out = self.forward_packed(packed)
        return [{"slide_embedding": out["slide_embedding"][s], "patch_tokens": tok, "cls": out["cls"][s]}
                for s, tok in enumerate(_tokens_in_input_order(packed, out["tokens"]))]

    def encode(self, features: Tensor, coords: Tensor, fragment: Tensor | None = None,
               mpp: float | None = None) -> dict[str, Tensor]:
        """Encode one slide; see :meth:`encode_batch`. ``fragment=None`` = one fragment for the whole slide.

        Example:
            >>> enc = SlideEncoder.from_preset("tiny", input_dim=16).eval()
            >>> with torch.inference_mode():
            ...     out = enc.encode(torch.randn(5, 16), torch.randint(0, 2048, (5, 2)))
            >>> out["slide_embedding"].shape, out["patch_tokens"].shape
            (torch.Size([80]), torch.Size([5, 64]))
        """
        return self.encode_batch([(features, coords, fragment)], mpps=[mpp])[0]

    def encode_patients(self, patients: Sequence[Sequence[SlideInput]],
                        mpps: Sequence[Sequence[float | None]] | None = None,
                        names: Sequence[Sequence[str]] | None = None) -> list[dict]:
        """Encode several patients, each one packed sequence of its slides, in one pass.

        Args:
            patients: per patient, ``[(features [N,C], coords [N,2] level-0 px, fragment [N] or None), ...]``.
            mpps: optional µm/px per patient per slide (needed only with ``rope_unit_um``).
            names: optional slide names per patient, used in error messages.

        Returns:
            One dict per patient: ``slide_embedding`` ``[output_dim]`` (the patient's embedding: pooled over
            all of its patches), ``cls`` ``[D]``, and ``patch_tokens``: a list of ``[N_s, D]``, one per slide,
            in each slide's input order.
        """
        packed = self.pack_patients(patients, mpps, names)
        out = self.forward_packed(packed)
        return [{"slide_embedding": out["slide_embedding"][p], "cls": out["cls"][p],
                 "patch_tokens": list(torch.split(tok, packed.slides_per_item[p]))}  # one [N_s, D] per slide
                for p, tok in enumerate(_tokens_in_input_order(packed, out["tokens"]))]

    def forward_patients(self, patients: Sequence[Sequence[SlideInput]],
                         mpps: Sequence[Sequence[float | None]] | None = None,
                         names: Sequence[Sequence[str]] | None = None) -> Tensor:
        """Patient embeddings ``[B, output_dim]``, one packed sequence per patient (see :meth:`encode_patients`)."""
        return self.forward_packed(self.pack_patients(patients, mpps, names))["slide_embedding"]


def _tokens_in_input_order(packed: PackedSlides, tokens: Tensor) -> list[Tensor]:
    """Per packed item (slide or patient), its patch tokens ``[N, D]`` back in input order (``packed.order`` undone)."""
    items, start = [], 0
    for n, order in zip(packed.n_patches, packed.order):
        tok = tokens[start : start + n]
        inverse = torch.empty(n, dtype=torch.long, device=tok.device)
        inverse[torch.as_tensor(order, device=tok.device)] = torch.arange(n, device=tok.device)
        items.append(tok[inverse])
        start += n
    return items
