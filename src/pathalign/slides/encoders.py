"""Compatibility module: the patch encoders live in :mod:`pathalign.slides.patch_encoders`."""
from __future__ import annotations

from .patch_encoders import (
    IMAGENET,
    PATCH_ENCODERS,
    PatchEncoder,
    PatchEncoderError,
    PatchEncoderSpec,
    Preprocess,
    build_patch_encoder,
    get_spec,
    make_transform,
)
from .patch_encoders.builtin import StainTextureFeatures

__all__ = ["IMAGENET", "PATCH_ENCODERS", "PatchEncoder", "PatchEncoderError", "PatchEncoderSpec", "Preprocess",
           "StainTextureFeatures", "build_patch_encoder", "get_spec", "make_transform"]
