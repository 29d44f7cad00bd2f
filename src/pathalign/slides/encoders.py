"""Patch encoders: a registry of models that turn RGB patches into feature vectors.

Every entry carries its model, its input transform, its output dim and its precision.

* ``pathalign-stats`` (default, built in, no download): stain-deconvolution (haematoxylin,
  eosin, DAB) statistics, colour, texture and nuclear-density features — a documented
  baseline that carries real signal on H&E and runs anywhere.
* Foundation models as timm architectures — ``exaone-path-2.5`` (ViT-B/14, 224 px), ``uni``,
  ``uni2-h``, ``conch-v1.5``, ``virchow2``, ``h-optimus-0``, ``phikon-v2``,
  ``prov-gigapath``. Weights come from ``weights=`` (a local safetensors/.bin/.pth file or a
  Hub snapshot folder) or from the Hugging Face Hub when it is reachable; otherwise building
  the encoder fails with a message that says where to get them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import PathalignError
from ..registry import Registry

PATCH_ENCODERS: Registry["PatchEncoderSpec"] = Registry("patch encoder")

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
OPENAI_CLIP = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))
HOPTIMUS = ((0.707223, 0.578729, 0.703617), (0.211883, 0.230117, 0.177517))
# Ruifrok & Johnston stain vectors (rows: haematoxylin, eosin, DAB), as in scikit-image's rgb2hed
RGB_FROM_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
HED_FROM_RGB = np.linalg.inv(RGB_FROM_HED)
OD_SCALE = math.log(1e6)  # rgb2hed's scale → optical density in natural-log units


class PatchEncoderError(PathalignError, RuntimeError):
    """A patch encoder that cannot be built (unknown name, weights unavailable)."""


@dataclass
class PatchEncoder:
    """A ready encoder: ``model(batch) -> [B, dim]`` after ``transform(uint8 [B,H,W,3] tensor) -> float``."""

    name: str
    model: nn.Module
    transform: Callable[[Tensor], Tensor]
    dim: int
    precision: torch.dtype = torch.float32


@dataclass
class PatchEncoderSpec:
    name: str
    build: Callable[..., PatchEncoder]
    dim: int
    description: str
    hub_id: str | None = None
    extra: dict = field(default_factory=dict)


def resize_crop_normalise(size: int, crop: int, mean, std) -> Callable[[Tensor], Tensor]:
    """uint8 ``[B,H,W,3]`` → float ``[B,3,crop,crop]``: resize the short side to ``size`` (bicubic, antialiased),
    centre-crop ``crop``, normalise with ``mean``/``std``."""
    mean_t = torch.tensor(mean).view(1, 3, 1, 1)
    std_t = torch.tensor(std).view(1, 3, 1, 1)

    def transform(batch: Tensor) -> Tensor:
        x = batch.permute(0, 3, 1, 2).float() / 255.0  # [B,H,W,3] -> [B,3,H,W]
        h, w = x.shape[-2:]
        scale = size / min(h, w)
        if scale != 1:
            x = F.interpolate(x, size=(round(h * scale), round(w * scale)), mode="bicubic", antialias=True,
                              align_corners=False).clamp(0, 1)
        h, w = x.shape[-2:]
        top, left = (h - crop) // 2, (w - crop) // 2
        x = x[..., top:top + crop, left:left + crop]
        return (x - mean_t.to(x.device)) / std_t.to(x.device)

    return transform


# ----------------------------------------------------------------------------- built-in baseline
class StainTextureFeatures(nn.Module):
    """Hand-crafted H&E features, batched in torch (``[B,3,H,W]`` in [0,1] → ``[B, 46]``).

    * optical density → haematoxylin / eosin / DAB by colour deconvolution (Ruifrok & Johnston, as
      scikit-image's ``rgb2hed``, in natural-log OD units): mean, std and 10/50/90th percentiles per
      stain (15, percentiles on a 2x-downsampled copy);
    * RGB mean and std (6); fractions of nuclear (H > 0.15), eosin-rich (E > 0.15) and
      background (bright) pixels (3);
    * grey-level histogram, 8 bins (8);
    * texture: Sobel gradient magnitude mean/std, |Laplacian| at 1, 2 and 4x downsampling (5);
    * haematoxylin texture: local variance at 4 and 16 px, autocorrelation at 2, 4, 8 px lags (5);
    * haematoxylin blob density: fraction of 8x8 cells whose mean H exceeds 0.15 and its
      std over the patch (2); eosin fibre anisotropy: |gx|-|gy| balance of the eosin channel (2).
    """

    dim = 46

    def __init__(self):
        super().__init__()
        self.register_buffer("hed_from_rgb", torch.tensor(HED_FROM_RGB, dtype=torch.float32))
        sobel = torch.tensor([[1.0, 0, -1], [2, 0, -2], [1, 0, -1]])
        self.register_buffer("sobel", torch.stack([sobel, sobel.T])[:, None])  # [2,1,3,3]
        self.register_buffer("laplace", torch.tensor([[0.0, 1, 0], [1, -4, 1], [0, 1, 0]])[None, None])

    def hed(self, x: Tensor) -> Tensor:
        """Stain concentrations ``[B,3,H,W]`` (as scikit-image ``rgb2hed``, channels first)."""
        od = torch.log(torch.clamp(x, min=1e-6)) / math.log(1e-6)  # optical density scaled to [0, 1]
        hed = torch.einsum("bchw,cd->bdhw", od, self.hed_from_rgb)
        return torch.clamp(hed, min=0)

    def forward(self, x: Tensor) -> Tensor:
        b = x.shape[0]
        x = x.float()
        hed = self.hed(x) * OD_SCALE  # stain optical densities (natural log units)
        flat = hed.flatten(2)  # [B,3,HW]
        small = F.avg_pool2d(hed, 2).flatten(2)  # percentiles on a 2x-downsampled copy (4x less sorting)
        q = torch.quantile(small, torch.tensor([0.1, 0.5, 0.9], device=x.device), dim=2).permute(1, 2, 0)  # [B,3,3]
        feats = [flat.mean(2), flat.std(2), q.reshape(b, 9)]
        feats += [x.flatten(2).mean(2), x.flatten(2).std(2)]
        h, e = hed[:, 0:1], hed[:, 1:2]
        feats.append(torch.stack([(h > 0.15).float().mean((1, 2, 3)), (e > 0.15).float().mean((1, 2, 3)),
                                  (x.min(1).values > 0.85).float().mean((1, 2))], 1))
        grey = x.mean(1, keepdim=True)
        feats.append(torch.stack([((grey >= i / 8) & (grey < (i + 1) / 8 + (i == 7))).float().mean((1, 2, 3))
                                  for i in range(8)], 1))
        g = F.conv2d(grey, self.sobel, padding=1)
        mag = torch.sqrt(g[:, 0] ** 2 + g[:, 1] ** 2)
        tex = [mag.mean((1, 2)), mag.std((1, 2))]
        level = grey
        for _ in range(3):
            tex.append(F.conv2d(level, self.laplace).abs().mean((1, 2, 3)))
            level = F.avg_pool2d(level, 2)
        feats.append(torch.stack(tex, 1))
        htex = []
        for k in (4, 16):
            m = F.avg_pool2d(h, k)
            m2 = F.avg_pool2d(h * h, k)
            htex.append((m2 - m * m).clamp(min=0).mean((1, 2, 3)))
        hc = h - h.mean((2, 3), keepdim=True)
        var = (hc * hc).mean((1, 2, 3)).clamp(min=1e-8)
        for lag in (2, 4, 8):
            ac = (hc[..., lag:, :] * hc[..., :-lag, :]).mean((1, 2, 3)) + (hc[..., :, lag:] * hc[..., :, :-lag]).mean((1, 2, 3))
            htex.append(ac / (2 * var))
        feats.append(torch.stack(htex, 1))
        cells = F.avg_pool2d(h, 8)
        blob = (cells > 0.15).float()
        feats.append(torch.stack([blob.mean((1, 2, 3)), cells.flatten(1).std(1)], 1))
        ge = F.conv2d(e, self.sobel, padding=1).abs().mean((2, 3))  # [B,2]: |gx|, |gy|
        feats.append(torch.stack([(ge[:, 0] - ge[:, 1]) / (ge.sum(1) + 1e-6), ge.sum(1)], 1))
        out = torch.cat(feats, 1)
        return torch.nan_to_num(out)


def _build_stats(weights=None, device="cpu") -> PatchEncoder:
    def transform(batch: Tensor) -> Tensor:
        return batch.permute(0, 3, 1, 2).float() / 255.0  # [B,H,W,3] uint8 -> [B,3,H,W] in [0,1]

    return PatchEncoder("pathalign-stats", StainTextureFeatures().eval(), transform, StainTextureFeatures.dim)


PATCH_ENCODERS.register("pathalign-stats")(PatchEncoderSpec(
    "pathalign-stats", _build_stats, StainTextureFeatures.dim,
    "built-in baseline: stain deconvolution, colour and texture statistics (no download)"))


# ----------------------------------------------------------------------------- timm foundation models
class _TokenPool(nn.Module):
    """Virchow-style output: concat(CLS, mean of patch tokens after the prefix tokens)."""

    def __init__(self, model: nn.Module, n_prefix: int):
        super().__init__()
        self.model, self.n_prefix = model, n_prefix

    def forward(self, x: Tensor) -> Tensor:
        tokens = self.model.forward_features(x)  # [B, prefix + patches, D]
        return torch.cat([tokens[:, 0], tokens[:, self.n_prefix:].mean(1)], dim=-1)


def _timm_kwargs(extra: dict) -> dict:
    kw = dict(extra.get("timm_kwargs", {}))
    if kw.pop("swiglu_packed", False):
        from timm.layers import SwiGLUPacked

        kw.update(mlp_layer=SwiGLUPacked, act_layer=nn.SiLU)
    return kw


def _load_weights(model: nn.Module, weights: str | Path, name: str) -> None:
    from ..io.checkpoints import read_state_dict

    path = Path(weights)
    if path.is_dir():
        found = [p for p in ("model.safetensors", "pytorch_model.bin") if (path / p).is_file()]
        if not found:
            raise PatchEncoderError(f"{path}: no model.safetensors or pytorch_model.bin for patch encoder {name!r}")
        path = path / found[0]
    sd = read_state_dict(path)
    sd = {k.removeprefix("module.").removeprefix("model."): v for k, v in sd.items()}
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [k for k in missing if not k.startswith("head")]
    if missing or unexpected:
        raise PatchEncoderError(f"{path}: weights do not fit patch encoder {name!r} "
                                f"(missing {missing[:4]}, unexpected {list(unexpected)[:4]})")


def _build_timm(spec: PatchEncoderSpec, weights=None, device="cpu", pretrained: bool = True) -> PatchEncoder:
    import timm

    extra = spec.extra
    kw = _timm_kwargs(extra)
    arch = extra["arch"]
    if weights is not None or not pretrained:
        model = timm.create_model(arch, pretrained=False, num_classes=0, **kw)
        if weights is not None:
            _load_weights(model, weights, spec.name)
    else:
        if spec.hub_id is None:
            raise PatchEncoderError(f"patch encoder {spec.name!r} has no Hub source: pass --weights FILE")
        try:
            model = timm.create_model(f"hf-hub:{spec.hub_id}", pretrained=True, num_classes=0, **kw)
        except Exception as e:  # noqa: BLE001 - offline, gated, missing token...
            raise PatchEncoderError(
                f"patch encoder {spec.name!r}: no local weights given and the Hub copy ({spec.hub_id}) could not be "
                f"loaded ({type(e).__name__}: {str(e)[:160]}). Download it where you have access (accept the model's "
                f"licence on the Hub), then pass --weights /path/to/model.safetensors (or the snapshot folder).") from None
    if extra.get("pool") == "cls+mean":
        model = _TokenPool(model, extra["n_prefix"])
    mean, std = extra.get("norm", IMAGENET)
    transform = resize_crop_normalise(extra.get("resize", 224), extra.get("crop", 224), mean, std)
    return PatchEncoder(spec.name, model.eval(), transform, spec.dim, extra.get("precision", torch.float16))


def _register_timm(name: str, dim: int, description: str, hub_id: str | None, **extra) -> None:
    spec = PatchEncoderSpec(name, None, dim, description, hub_id, extra)  # type: ignore[arg-type]
    spec.build = lambda weights=None, device="cpu", pretrained=True, _s=spec: _build_timm(_s, weights, device, pretrained)
    PATCH_ENCODERS.register(name)(spec)


_register_timm("exaone-path-2.5", 768, "EXAONE Path 2.5 patch encoder, ViT-B/14 at 224 px (weights: --weights)", None,
               arch="vit_base_patch14_dinov2", timm_kwargs=dict(img_size=224), resize=256, crop=224,
               precision=torch.bfloat16)
_register_timm("uni", 1024, "UNI (MahmoodLab), ViT-L/16", "MahmoodLab/UNI", arch="vit_large_patch16_224",
               timm_kwargs=dict(img_size=224, init_values=1e-5, dynamic_img_size=True))
_register_timm("uni2-h", 1536, "UNI2-h (MahmoodLab), ViT-H/14 with registers", "MahmoodLab/UNI2-h",
               arch="vit_giant_patch14_224",
               timm_kwargs=dict(img_size=224, depth=24, num_heads=24, init_values=1e-5, embed_dim=1536,
                                mlp_ratio=2.66667 * 2, no_embed_class=True, reg_tokens=8, dynamic_img_size=True,
                                swiglu_packed=True), precision=torch.bfloat16)
_register_timm("conch-v1.5", 768, "CONCH v1.5 vision tower (MahmoodLab), ViT-L/16 at 448 px", "MahmoodLab/conchv1_5",
               arch="vit_large_patch16_224", timm_kwargs=dict(img_size=448, num_classes=0), resize=448, crop=448,
               norm=OPENAI_CLIP)
_register_timm("virchow2", 2560, "Virchow2 (Paige), ViT-H/14, concat(CLS, mean patch tokens)", "paige-ai/Virchow2",
               arch="vit_huge_patch14_224",
               timm_kwargs=dict(img_size=224, init_values=1e-5, reg_tokens=4, mlp_ratio=5.3375, global_pool="",
                                dynamic_img_size=True, swiglu_packed=True),
               pool="cls+mean", n_prefix=5)
_register_timm("h-optimus-0", 1536, "H-optimus-0 (Bioptimus), ViT-g/14", "bioptimus/H-optimus-0",
               arch="vit_giant_patch14_reg4_dinov2", timm_kwargs=dict(img_size=224, init_values=1e-5,
                                                                       dynamic_img_size=False), norm=HOPTIMUS)
_register_timm("phikon-v2", 1024, "Phikon-v2 (Owkin), ViT-L/16 DINOv2", "owkin/phikon-v2",
               arch="vit_large_patch14_dinov2", timm_kwargs=dict(img_size=224, patch_size=16))
_register_timm("prov-gigapath", 1536, "Prov-GigaPath tile encoder, ViT-g/14", "prov-gigapath/prov-gigapath",
               arch="vit_giant_patch14_dinov2", timm_kwargs=dict(img_size=224), resize=256, crop=224)


def build_patch_encoder(name: str, weights: str | Path | None = None, device: str = "cpu", **kw) -> PatchEncoder:
    """Build the registered patch encoder ``name``; see the module docstring for where weights come from."""
    try:
        spec = PATCH_ENCODERS.get(name)
    except KeyError as e:
        raise PatchEncoderError(str(e.args[0])) from None
    if weights is not None and not Path(weights).exists():
        raise PatchEncoderError(f"{weights}: weights for patch encoder {name!r} not found")
    enc = spec.build(weights=weights, device=device, **kw)
    enc.model.to(device)
    return enc
