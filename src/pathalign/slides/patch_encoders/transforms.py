"""Batched eval transforms that reproduce the publishers' torchvision pipelines on uint8 tensors.

``Resize`` runs on uint8 like the publishers' PIL / torchvision pipelines (the resized image is
rounded to 8 bits before ``ToTensor``), so a resized patch differs from the PIL path by at most
one grey level; at the model's native size ``Resize``/``CenterCrop`` are the identity.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from .base import Preprocess

_MODES = {"bilinear": InterpolationMode.BILINEAR, "bicubic": InterpolationMode.BICUBIC}


def make_transform(pre: Preprocess) -> Callable[[Tensor], Tensor]:
    """A function uint8 ``[B,H,W,3]`` → float32 ``[B,3,crop,crop]`` applying ``pre``.

    Args:
        pre: the publisher's preprocessing.

    Returns:
        The transform; it runs on the batch's device.
    """

    def transform(batch: Tensor) -> Tensor:
        x = batch.permute(0, 3, 1, 2)  # [B,H,W,3] -> [B,3,H,W], still uint8
        if pre.resize is not None and min(x.shape[-2:]) != pre.resize:
            x = TF.resize(x, [pre.resize], interpolation=_MODES[pre.interpolation], antialias=True)
        if pre.crop is not None and tuple(x.shape[-2:]) != (pre.crop, pre.crop):
            x = TF.center_crop(x, [pre.crop, pre.crop])
        x = x.float() / 255.0
        if pre.mean is not None:
            mean = torch.tensor(pre.mean, device=x.device).view(1, 3, 1, 1)
            std = torch.tensor(pre.std, device=x.device).view(1, 3, 1, 1)
            x = (x - mean) / std
        return x

    return transform
