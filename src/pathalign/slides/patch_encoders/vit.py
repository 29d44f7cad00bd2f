"""Foundation models that are timm Vision Transformers: EXAONE Path 2.5, UNI, UNI2-h, Virchow2,
H-optimus-0 and Prov-GigaPath, each with its publisher's ``timm.create_model`` arguments,
output, preprocessing and precision (sources: ``docs/patch_encoders.md``)."""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from .base import HOPTIMUS, PatchEncoderSpec, Preprocess, count_blocks, register, strip_prefixes


class ViTFeatures(nn.Module):
    """A timm ViT ``trunk`` and the publisher's readout of its normed output tokens.

    Args:
        trunk: a timm ``VisionTransformer`` (``forward_features`` → ``[B, prefix + patches, D]``).
        output: ``"cls"`` (the CLS token) or ``"cls+mean"`` (concat CLS, mean of the patch tokens).
        n_prefix: CLS + register tokens in front of the patch tokens.
    """

    def __init__(self, trunk: nn.Module, output: str = "cls", n_prefix: int = 1):
        super().__init__()
        if output not in ("cls", "cls+mean"):
            raise ValueError(f"output must be cls or cls+mean, not {output!r}")
        self.trunk, self.output, self.n_prefix = trunk, output, n_prefix

    def forward(self, x: Tensor) -> Tensor:
        """``[B,3,H,W]`` → ``[B, D]`` (cls) or ``[B, 2D]`` (cls+mean)."""
        tokens = self.trunk.forward_features(x)  # [B, prefix + patches, D], after the final norm
        if self.output == "cls":
            return tokens[:, 0]
        return torch.cat([tokens[:, 0], tokens[:, self.n_prefix:].mean(1)], dim=-1)


def swiglu_packed() -> dict:
    """timm kwargs of the packed SwiGLU MLP (UNI2-h, Virchow2)."""
    from timm.layers import SwiGLUPacked

    return dict(mlp_layer=SwiGLUPacked, act_layer=nn.SiLU)


def timm_vit(arch: str, kwargs: Callable[[], dict], output: str = "cls", n_prefix: int = 1) -> Callable[..., nn.Module]:
    """A ``make_model(**overrides)`` hook building ``timm.create_model(arch, **kwargs(), **overrides)``."""

    def make_model(**overrides) -> nn.Module:
        import timm

        kw = {**kwargs(), "num_classes": 0, **overrides}
        return ViTFeatures(timm.create_model(arch, pretrained=False, **kw), output, n_prefix)

    return make_model


def timm_convert(prefixes: tuple[str, ...] = ()) -> Callable[[dict], dict]:
    """Publisher keys (timm names under ``prefixes``) → ``ViTFeatures`` keys (``trunk.`` + timm name).
    pathalign's own layout (``trunk.`` + timm name, from ``model.state_dict()``) is accepted too."""

    def convert(sd: dict[str, Tensor]) -> dict[str, Tensor]:
        sd = strip_prefixes(sd, prefixes + ("trunk.",))
        return {"trunk." + k: v for k, v in sd.items() if not k.startswith("head.")}

    return convert


def fit_depth(sd: dict[str, Tensor]) -> dict:
    """Read the depth off converted weights (so a checkpoint with fewer blocks builds that many); skip
    timm's random initialisation, which the loaded weights replace (minutes for a ViT-g on a CPU)."""
    depth = count_blocks(sd, "trunk.blocks.")
    return {"weight_init": "skip", **({"depth": depth} if depth else {})}


def _register(name: str, dim: int, description: str, arch: str, kwargs: Callable[[], dict], *,
              output: str = "cls", n_prefix: int = 1, prefixes: tuple[str, ...] = (), **spec) -> None:
    register(PatchEncoderSpec(name, dim, description, make_model=timm_vit(arch, kwargs, output, n_prefix),
                              convert=timm_convert(prefixes), fit=fit_depth, output=output, **spec))


# EXAONE Path 2.5: DINO (v1) ViT-B/14 at 224 px — learned 257-token position embedding, qkv bias,
# GELU MLP, LayerNorm eps 1e-6, no layer scale; output = normed CLS (exaonepath/models/patch_transformer.py).
_register("exaone-path-2.5", 768, "EXAONE Path 2.5 patch encoder (LG AI), DINO ViT-B/14 at 224 px, CLS",
          "vit_base_patch16_224", lambda: dict(patch_size=14, img_size=224),
          prefixes=("patch_encoder.backbone.", "backbone."),
          preprocess=Preprocess(resize=224, crop=224, interpolation="bilinear"), precision=torch.bfloat16,
          hub_id="LGAI-EXAONE/EXAONE-Path-2.5", hub_subfolder="patch-encoder",
          source="github.com/LG-AI-EXAONE/EXAONE-Path-2.5: exaonepath/models/patch_transformer.py (vit_base), "
                 "patch_encoder_hf.py (backbone), README 3.1.1 (transform), extract_single_slide_feature.py (bf16)")
_register("uni", 1024, "UNI (MahmoodLab), ViT-L/16 at 224 px, CLS",
          "vit_large_patch16_224", lambda: dict(img_size=224, patch_size=16, init_values=1e-5, dynamic_img_size=True),
          preprocess=Preprocess(224, 224, "bilinear"), precision=torch.float16,
          hub_id="MahmoodLab/UNI", weight_files=("pytorch_model.bin",),
          source="huggingface.co/MahmoodLab/UNI model card; TRIDENT UNIInferenceEncoder")
_register("uni2-h", 1536, "UNI2-h (MahmoodLab), ViT-H/14 with 8 registers, SwiGLU, CLS",
          "vit_giant_patch14_224",
          lambda: dict(img_size=224, patch_size=14, depth=24, num_heads=24, init_values=1e-5, embed_dim=1536,
                       mlp_ratio=2.66667 * 2, no_embed_class=True, reg_tokens=8, dynamic_img_size=True,
                       **swiglu_packed()),
          preprocess=Preprocess(224, 224, "bilinear"), precision=torch.bfloat16,
          hub_id="MahmoodLab/UNI2-h", weight_files=("pytorch_model.bin",),
          source="huggingface.co/MahmoodLab/UNI2-h model card; TRIDENT UNIv2InferenceEncoder")
_register("virchow2", 2560, "Virchow2 (Paige), ViT-H/14 with 4 registers, concat(CLS, mean patch tokens)",
          "vit_huge_patch14_224",
          lambda: dict(img_size=224, init_values=1e-5, reg_tokens=4, mlp_ratio=5.3375, global_pool="",
                       dynamic_img_size=True, **swiglu_packed()),
          output="cls+mean", n_prefix=5,
          preprocess=Preprocess(resize=224, crop=None, interpolation="bicubic"), precision=torch.float16,
          hub_id="paige-ai/Virchow2", weight_files=("model.safetensors", "pytorch_model.bin"),
          source="huggingface.co/paige-ai/Virchow2 model card; TRIDENT Virchow2InferenceEncoder")
_register("h-optimus-0", 1536, "H-optimus-0 (Bioptimus), ViT-g/14 with 4 registers, CLS",
          "vit_giant_patch14_reg4_dinov2",
          lambda: dict(img_size=224, init_values=1e-5, dynamic_img_size=True, global_pool="token"),
          n_prefix=5, preprocess=Preprocess(resize=224, crop=None, interpolation="bilinear",
                                            mean=HOPTIMUS[0], std=HOPTIMUS[1]),
          precision=torch.float16, hub_id="bioptimus/H-optimus-0",
          weight_files=("model.safetensors", "pytorch_model.bin"),
          source="huggingface.co/bioptimus/H-optimus-0 model card; TRIDENT HOptimus0InferenceEncoder")
_register("prov-gigapath", 1536, "Prov-GigaPath tile encoder, ViT-g/16 (DINOv2, SwiGLU), CLS",
          "vit_giant_patch14_dinov2",
          lambda: dict(img_size=224, patch_size=16, embed_dim=1536, depth=40, num_heads=24, mlp_ratio=5.33334,
                       dynamic_img_size=True),
          preprocess=Preprocess(resize=256, crop=224, interpolation="bicubic"), precision=torch.float16,
          hub_id="prov-gigapath/prov-gigapath", weight_files=("pytorch_model.bin",),
          source="github.com/prov-gigapath/prov-gigapath README (tile encoder); TRIDENT GigaPathInferenceEncoder")
