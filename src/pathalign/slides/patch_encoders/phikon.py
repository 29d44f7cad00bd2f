"""Phikon-v2 (Owkin): a DINOv2 ViT-L/16 at 224 px published as a transformers ``Dinov2Model``.

Its keys are mapped onto timm's ViT (query/key/value → one ``qkv``, ``layer_scale*.lambda1`` →
``ls*.gamma``, ...) instead of depending on transformers: timm already expresses the same
architecture (pre-norm blocks, layer scale, GELU MLP, LayerNorm eps 1e-6, learned position
embedding with the CLS entry) and is a dependency anyway, while transformers would be a large
extra (with its own huggingface_hub/tokenizers pins) used by this one entry. The test compares
the map against an independent, transformers-layout Dinov2 forward.
"""
from __future__ import annotations

import re

import torch
from torch import Tensor

from .base import PatchEncoderError, PatchEncoderSpec, Preprocess, register, strip_prefixes
from .vit import fit_depth, timm_vit

_GRID = 224 // 16
_RENAMES = [
    (r"^embeddings\.cls_token$", "cls_token"),
    (r"^embeddings\.position_embeddings$", "pos_embed"),
    (r"^embeddings\.patch_embeddings\.projection\.", "patch_embed.proj."),
    (r"^encoder\.layer\.(\d+)\.norm([12])\.", r"blocks.\1.norm\2."),
    (r"^encoder\.layer\.(\d+)\.attention\.output\.dense\.", r"blocks.\1.attn.proj."),
    (r"^encoder\.layer\.(\d+)\.layer_scale([12])\.lambda1$", r"blocks.\1.ls\2.gamma"),
    (r"^encoder\.layer\.(\d+)\.mlp\.fc([12])\.", r"blocks.\1.mlp.fc\2."),
    (r"^layernorm\.", "norm."),
]
_QKV = re.compile(r"^encoder\.layer\.(\d+)\.attention\.attention\.(query|key|value)\.(weight|bias)$")


def dinov2_to_timm(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """transformers ``Dinov2Model`` state dict → timm ``VisionTransformer`` state dict.

    Args:
        sd: keys as in ``Dinov2Model.state_dict()`` (optionally under ``dinov2.``).

    Returns:
        timm keys; ``embeddings.mask_token`` (training only) is dropped; unknown keys are kept
        as they are so that the strict load names them.
    """
    sd = strip_prefixes(sd, ("dinov2.",))
    if any(k.startswith("trunk.") for k in sd):  # pathalign's own layout (model.state_dict())
        return sd
    out: dict[str, Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, Tensor]] = {}
    for key, value in sd.items():
        if key == "embeddings.mask_token":
            continue
        m = _QKV.match(key)
        if m:
            qkv.setdefault((m.group(1), m.group(3)), {})[m.group(2)] = value
            continue
        for pattern, repl in _RENAMES:
            if re.match(pattern, key):
                key = re.sub(pattern, repl, key)
                break
        out[key] = value
    for (layer, kind), parts in qkv.items():
        if set(parts) != {"query", "key", "value"}:
            raise PatchEncoderError(f"layer {layer}: attention {kind} lacks {sorted({'query', 'key', 'value'} - set(parts))}")
        out[f"blocks.{layer}.attn.qkv.{kind}"] = torch.cat([parts["query"], parts["key"], parts["value"]], 0)
    pos = out.get("pos_embed")
    if pos is not None and pos.shape[1] != 1 + _GRID * _GRID:  # a checkpoint saved at another size
        from timm.layers import resample_abs_pos_embed

        out["pos_embed"] = resample_abs_pos_embed(pos.float(), new_size=(_GRID, _GRID), num_prefix_tokens=1,
                                                  interpolation="bicubic", antialias=True, verbose=False)
    return {"trunk." + k: v for k, v in out.items()}


register(PatchEncoderSpec(
    "phikon-v2", 1024, "Phikon-v2 (Owkin), DINOv2 ViT-L/16 at 224 px (transformers layout mapped onto timm), CLS",
    make_model=timm_vit("vit_large_patch16_224", lambda: dict(img_size=224, patch_size=16, init_values=1.0)),
    convert=dinov2_to_timm, fit=fit_depth, output="cls",
    preprocess=Preprocess(resize=224, crop=224, interpolation="bilinear"), precision=torch.float32,
    hub_id="owkin/phikon-v2", weight_files=("model.safetensors", "pytorch_model.bin"),
    source="huggingface.co/owkin/phikon-v2 model card (AutoModel, last_hidden_state[:, 0]); "
           "TRIDENT Phikonv2InferenceEncoder; transformers Dinov2Model"))
