"""CONCH v1.5 (MahmoodLab) vision tower: a ViT-L/16 trunk (layer scale, qkv bias) run at 448 px,
then an attentional pooler (one learned query, 8 heads) to 768 dims and a LayerNorm.

The reference code (TRIDENT ``model_zoo/conchv1_5``) builds the trunk at 224 px, resamples the
checkpoint's position embedding to that 14x14 grid (bilinear) and, at 448 px, interpolates it to
28x28 on every forward (DINO's bicubic ``scale_factor=(28.1/14)``). pathalign does both resamplings
once, when converting the checkpoint, into a trunk built at 448 px: the same numbers, once.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import PatchEncoderSpec, Preprocess, count_blocks, register, strip_prefixes

TRUNK_IMG, TRUNK_PATCH, REF_GRID = 448, 16, 14  # input size, patch size, reference trunk grid (224 px)


class AttentionalPooler(nn.Module):
    """CoCa-style attentional pooling: ``n_queries`` learned queries attend over the tokens.

    Args:
        d_model: query / output dim (768).
        context_dim: token dim (1024).
        n_head: attention heads.
        n_queries: learned queries (1 for CONCH v1.5's contrastive output).
    """

    def __init__(self, d_model: int = 768, context_dim: int = 1024, n_head: int = 8, n_queries: int = 1):
        super().__init__()
        self.heads = n_head
        self.query = nn.Parameter(torch.randn(n_queries, d_model))
        self.ln_k = nn.LayerNorm(context_dim)
        self.ln_q = nn.LayerNorm(d_model)
        self.to_q = nn.Linear(d_model, d_model, bias=False)
        self.to_kv = nn.Linear(context_dim, 2 * d_model, bias=False)
        self.to_out = nn.Linear(d_model, d_model, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        """``[B, N, context_dim]`` → ``[B, n_queries, d_model]``."""
        b, n, _ = x.shape
        h = self.heads
        q = self.to_q(self.ln_q(self.query))  # [Q, d]
        k, v = self.to_kv(self.ln_k(x)).chunk(2, dim=-1)  # [B, N, d] each
        q = q.view(1, -1, h, q.shape[-1] // h).transpose(1, 2).expand(b, -1, -1, -1)  # [B, h, Q, d/h]
        k = k.view(b, n, h, -1).transpose(1, 2)  # [B, h, N, d/h]
        v = v.view(b, n, h, -1).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v)  # [B, h, Q, d/h]
        return self.to_out(out.transpose(1, 2).reshape(b, -1, h * out.shape[-1]))  # [B, Q, d]


class ConchVisionTower(nn.Module):
    """Trunk → attentional pooler (first query) → LayerNorm: ``[B,3,448,448]`` → ``[B, 768]``."""

    def __init__(self, depth: int = 24, weight_init: str = ""):
        super().__init__()
        import timm

        self.trunk = timm.create_model("vit_large_patch16_224", pretrained=False, num_classes=0, img_size=TRUNK_IMG,
                                       init_values=1.0, depth=depth, weight_init=weight_init)
        self.attn_pool_contrast = AttentionalPooler(768, 1024, 8, 1)
        self.ln_contrast = nn.LayerNorm(768)

    def forward(self, x: Tensor) -> Tensor:
        tokens = self.trunk.forward_features(x)  # [B, 1 + 28*28, 1024], normed
        return self.ln_contrast(self.attn_pool_contrast(tokens)[:, 0])


def conch_pos_embed(pos: Tensor) -> Tensor:
    """The position embedding the reference code adds at 448 px, from a checkpoint's ``[1, 1+g*g, D]``."""
    from timm.layers import resample_abs_pos_embed

    n = pos.shape[1] - 1
    if n != REF_GRID * REF_GRID:  # the reference resizes to its 224-px trunk first (bilinear, no antialias)
        pos = resample_abs_pos_embed(pos, new_size=(REF_GRID, REF_GRID), num_prefix_tokens=1,
                                     interpolation="bilinear", antialias=False, verbose=False)
    cls, grid = pos[:, :1], pos[:, 1:]
    d = pos.shape[-1]
    side = TRUNK_IMG // TRUNK_PATCH + 0.1  # DINO's +0.1 against floating-point error
    grid = F.interpolate(grid.reshape(1, REF_GRID, REF_GRID, d).permute(0, 3, 1, 2),  # [1,D,14,14]
                         scale_factor=(side / math.sqrt(REF_GRID * REF_GRID),) * 2, mode="bicubic")
    grid = grid.permute(0, 2, 3, 1).reshape(1, -1, d)  # [1, 28*28, D]
    return torch.cat([cls, grid], dim=1)


def _convert(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    sd = strip_prefixes(sd, ("visual.", "model."))
    if "trunk.pos_embed" in sd:
        sd["trunk.pos_embed"] = conch_pos_embed(sd["trunk.pos_embed"].float())
    return {k: v for k, v in sd.items() if not k.startswith("trunk.head.")}


register(PatchEncoderSpec(
    "conch-v1.5", 768, "CONCH v1.5 vision tower (MahmoodLab): ViT-L/16 at 448 px + attentional pooler → 768",
    make_model=lambda depth=24, weight_init="", **_: ConchVisionTower(depth, weight_init), convert=_convert,
    fit=lambda sd: {"weight_init": "skip", **({"depth": d} if (d := count_blocks(sd, "trunk.blocks.")) else {})},
    output="pooler", preprocess=Preprocess(resize=448, crop=448, interpolation="bilinear"), precision=torch.float16,
    hub_id="MahmoodLab/conchv1_5", weight_files=("pytorch_model_vision.bin",),
    source="huggingface.co/MahmoodLab/conchv1_5 model card; TRIDENT model_zoo/conchv1_5/conchv1_5.py "
           "(CONCHVisionTower, AttentionalPooler, create_model_from_pretrained)"))
