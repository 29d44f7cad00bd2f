"""Per-patch scores as GeoJSON that QuPath imports (File > Import objects, or drag and drop).

The layout follows QuPath's own reader and writer (``qupath-core``,
``qupath/lib/io/PathObjectTypeAdapters.java`` and ``ROITypeAdapters.java``, QuPath v0.4 onwards):

* a ``FeatureCollection`` of ``Feature`` objects; ``geometry`` a GeoJSON ``Polygon`` in level-0 pixel
  coordinates (x right, y down), each ring closed;
* ``properties.objectType``: ``"tile"`` or ``"detection"`` for the patches (QuPath makes a
  ``PathTileObject`` / ``PathDetectionObject``), ``"annotation"`` for the tissue fragments;
* ``properties.measurements``: a JSON object name -> number (the v0.4+ form; v0.2-0.3 wrote a list of
  ``{"name", "value"}``, which QuPath still reads). JSON has no NaN, so a missing score is left out of
  that patch's measurements rather than written as ``NaN``;
* ``properties.name``, ``properties.classification`` (``{"name", "color": [r, g, b]}``) and a UUID
  ``id`` per feature, as QuPath writes them.
"""
from __future__ import annotations

import math
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from .atomic import atomic_write_text

TILE_TYPES = ("tile", "detection")


def _square(x: float, y: float, size: float) -> list[list[list[float]]]:
    """A closed square ring ``[[x, y], ...]`` with its top-left corner at (x, y)."""
    x, y, size = float(x), float(y), float(size)
    return [[[x, y], [x + size, y], [x + size, y + size], [x, y + size], [x, y]]]


def _feature(geometry: dict, properties: dict, seed: str) -> dict:
    # a stable UUID per object (same file in, same ids out), the form QuPath writes
    return {"type": "Feature", "id": str(uuid.uuid5(uuid.NAMESPACE_URL, seed)), "geometry": geometry,
            "properties": properties}


def patch_features(slide_id: str, coords: np.ndarray, patch_size_level0: float, scores: Mapping[str, np.ndarray],
                   object_type: str = "tile", fragment: np.ndarray | None = None) -> list[dict]:
    """One QuPath tile (or detection) per patch, its scores as measurements.

    Args:
        slide_id: used in the names and ids.
        coords: ``[N, 2]`` level-0 (x, y) of each patch's top-left corner.
        patch_size_level0: the patch side in level-0 px.
        scores: measurement name -> ``[N]`` values (non-finite values are left out).
        object_type: ``"tile"`` or ``"detection"``.
        fragment: optional ``[N]`` fragment ids, written as a measurement ``fragment``.
    """
    if object_type not in TILE_TYPES:
        raise ValueError(f"object_type must be one of {TILE_TYPES}, got {object_type!r}")
    out = []
    for i, (x, y) in enumerate(np.asarray(coords)):
        meas = {name: float(v[i]) for name, v in scores.items() if math.isfinite(float(v[i]))}
        if fragment is not None:
            meas["fragment"] = float(fragment[i])
        props = {"objectType": object_type, "name": f"{slide_id} patch {i}", "measurements": meas}
        out.append(_feature({"type": "Polygon", "coordinates": _square(x, y, patch_size_level0)}, props,
                            f"pathalign:{slide_id}:patch:{i}"))
    return out


def fragment_annotations(slide_id: str, fragments: Iterable) -> list[dict]:
    """Tissue fragments (``pathalign.slides.segment.Fragment``: ``id``, ``exterior``, ``holes``, level-0
    px) as QuPath annotations of class ``Tissue``."""
    out = []
    for f in fragments:
        rings = [np.vstack([r, r[:1]]).tolist() for r in [f.exterior, *f.holes]]  # GeoJSON rings are closed
        props = {"objectType": "annotation", "name": f"{slide_id} fragment {f.id}",
                 "classification": {"name": "Tissue", "color": [0, 160, 0]},
                 "measurements": {"fragment": float(f.id)}}
        out.append(_feature({"type": "Polygon", "coordinates": rings}, props,
                            f"pathalign:{slide_id}:fragment:{f.id}"))
    return out


def write_qupath_geojson(path: str | Path, features: list[dict]) -> Path:
    """Write ``features`` as one GeoJSON ``FeatureCollection`` (atomically)."""
    import json

    path = Path(path)
    atomic_write_text(json.dumps({"type": "FeatureCollection", "features": features}, allow_nan=False), path)
    return path
