"""Deprecated alias of :mod:`pathalign.models.preprocessing` (kept for code that imports it; it warns once).

The molecular transforms are model state and moved below the model; import from
:mod:`pathalign.models.preprocessing` instead. This module will be removed in a later release.
"""
from __future__ import annotations

import warnings

from ..models.preprocessing import (
    TRANSFORMS,
    CNVTransform,
    ColumnStats,
    EmbeddingTransform,
    MethylationTransform,
    RNATransform,
    SNPTransform,
    make_transform,
    top_by_variance,
    top_variance,
)

warnings.warn("pathalign.cohort.preprocess is deprecated: import from pathalign.models.preprocessing",
              DeprecationWarning, stacklevel=2)

__all__ = ["CNVTransform", "ColumnStats", "EmbeddingTransform", "MethylationTransform", "RNATransform",
           "SNPTransform", "TRANSFORMS", "make_transform", "top_by_variance", "top_variance"]
