"""Deprecated alias of :mod:`pathalign.slides.patch_encoders` (kept for code that imports it; it warns once).

Import from :mod:`pathalign.slides.patch_encoders` instead; this module will be removed in a later release.
"""
from __future__ import annotations

import warnings

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

warnings.warn("pathalign.slides.encoders is deprecated: import from pathalign.slides.patch_encoders",
              DeprecationWarning, stacklevel=2)

__all__ = ["IMAGENET", "PATCH_ENCODERS", "PatchEncoder", "PatchEncoderError", "PatchEncoderSpec", "Preprocess",
           "StainTextureFeatures", "build_patch_encoder", "get_spec", "make_transform"]
