"""The tissue GeoJSON ``<slide>.geojson``: one Polygon per tissue fragment, level-0 px.

A GeoJSON ``FeatureCollection`` whose features are ``Polygon`` s (exterior ring, then holes, each
closed), with ``properties.fragment_id`` (the id that patches carry in ``coords.h5``), QuPath's
``objectType: annotation`` and ``classification.name: Tissue``, so QuPath imports the file as
annotations. The collection's ``properties`` record the ``mpp`` and the ``segmenter`` settings. Written
by ``pathalign segment`` (:func:`write_geojson`); read by ``patch``, ``heatmap`` and the attention plot
(:func:`read_geojson`) and by the pipeline's settings check (:func:`read_geojson_properties`).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import PathalignError
from .atomic import atomic_write_text


class TissueFileError(PathalignError, ValueError):
    """A tissue GeoJSON that cannot be read; the message names the file."""


@dataclass
class Fragment:
    """One tissue fragment: exterior ring and holes in level-0 px (float ``[n, 2]`` x, y), open rings."""

    id: int
    exterior: np.ndarray
    holes: list[np.ndarray] = field(default_factory=list)

    @property
    def area_px(self) -> float:
        import cv2

        return float(cv2.contourArea(self.exterior.astype(np.float32))
                     - sum(cv2.contourArea(h.astype(np.float32)) for h in self.holes))


def fragments_to_geojson(fragments: list[Fragment], properties: dict | None = None) -> dict:
    """A ``FeatureCollection`` of ``fragments`` (rings closed, rounded to 0.01 px); ``properties`` on the collection."""
    feats = []
    for f in fragments:
        rings = [np.vstack([r, r[:1]]).round(2).tolist() for r in [f.exterior, *f.holes]]
        feats.append({"type": "Feature", "geometry": {"type": "Polygon", "coordinates": rings},
                      "properties": {"fragment_id": f.id, "objectType": "annotation",
                                     "classification": {"name": "Tissue"}, "n_holes": len(f.holes)}})
    return {"type": "FeatureCollection", "features": feats, "properties": dict(properties or {})}


def write_geojson(path: str | Path, fragments: list[Fragment], properties: dict | None = None) -> Path:
    """Write the tissue GeoJSON of ``fragments`` (``properties`` on the collection) to ``path``, atomically."""
    atomic_write_text(json.dumps(fragments_to_geojson(fragments, properties)), path)
    return Path(path)


def read_geojson_properties(path: str | Path) -> dict:
    """The collection's ``properties`` of a tissue GeoJSON (``{}`` when it has none).

    Raises:
        TissueFileError: the file cannot be read or is not a JSON object; the message names it.
    """
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise TissueFileError(f"{path}: not a readable tissue GeoJSON ({type(e).__name__}: {e})") from e
    if not isinstance(data, dict):
        raise TissueFileError(f"{path}: not a readable tissue GeoJSON (a {type(data).__name__}, not an object)")
    props = data.get("properties")
    return props if isinstance(props, dict) else {}


def read_geojson(path: str | Path) -> list[Fragment]:
    """The fragments of a tissue GeoJSON written by :func:`fragments_to_geojson` (or Trident's, with ``fragment_id``)."""
    try:
        data = json.loads(Path(path).read_text())
        out = []
        for feat in data["features"]:
            rings = [np.asarray(r, np.float64)[:-1] for r in feat["geometry"]["coordinates"]]
            out.append(Fragment(int(feat["properties"]["fragment_id"]), rings[0], rings[1:]))
    except (OSError, ValueError, KeyError, TypeError, IndexError) as e:
        raise TissueFileError(f"{path}: not a readable tissue GeoJSON ({type(e).__name__}: {e})") from e
    return out
