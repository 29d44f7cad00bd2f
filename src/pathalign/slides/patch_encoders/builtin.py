"""The built-in ``pathalign-stats`` encoder: stain, colour and texture statistics (no weights)."""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import PatchEncoderSpec, Preprocess, register

# Ruifrok & Johnston stain vectors (rows: haematoxylin, eosin, DAB), as in scikit-image's rgb2hed
RGB_FROM_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
HED_FROM_RGB = np.linalg.inv(RGB_FROM_HED)
OD_SCALE = math.log(1e6)  # rgb2hed's scale → optical density in natural-log units


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


register(PatchEncoderSpec(
    "pathalign-stats", StainTextureFeatures.dim,
    "built-in baseline: stain deconvolution, colour and texture statistics (no download)",
    make_model=lambda **_: StainTextureFeatures(), output="statistics",
    preprocess=Preprocess(resize=None, crop=None, mean=None, std=None), precision=torch.float32,
    needs_weights=False, source="pathalign (hand-crafted; Ruifrok & Johnston stain vectors)"))
