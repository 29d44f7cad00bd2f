"""Deprecated alias of :mod:`pathalign.io.features` (kept for code that imports it; it warns once).

Import from :mod:`pathalign.io.features` instead; this module will be removed in a later release.
"""
from __future__ import annotations

import warnings

from ..io.features import (
    FeatureFileError,
    PatchFeatures,
    grid_fragments,
    is_complete,
    read_patch_features,
    validate_coords,
    write_patch_file,
)

warnings.warn("pathalign.slides.features_io is deprecated: import from pathalign.io.features",
              DeprecationWarning, stacklevel=2)

__all__ = ["FeatureFileError", "PatchFeatures", "grid_fragments", "is_complete", "read_patch_features",
           "validate_coords", "write_patch_file"]
