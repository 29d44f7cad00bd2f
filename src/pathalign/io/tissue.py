"""The tissue GeoJSON ``<slide>.geojson``: one Polygon per tissue fragment, level-0 px.

A GeoJSON ``FeatureCollection`` whose features are ``Polygon`` s (exterior ring, then holes, each
closed), with ``properties.fragment_id`` (the id that patches carry in ``coords.h5``), QuPath's
``objectType: annotation`` and ``classification.name: Tissue``, so QuPath imports the file as
annotations. Written by ``pathalign segment``; read by ``patch``, ``heatmap`` and the attention plot.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import PathalignError


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
