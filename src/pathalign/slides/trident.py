"""Fragment ids for Trident patch files, from the tissue GeoJSON Trident writes beside them.

Trident (github.com/mahmoodlab/TRIDENT) lays out a job folder as (``Processor``,
``WSI.segment_tissue``, ``WSI.extract_tissue_coords``, ``WSI.extract_patch_features``)::

    <job>/contours_geojson/<slide>.geojson                                   tissue pieces
    <job>/<mag>x_<ps>px_<overlap>px_overlap/patches/<slide>_patches.h5       coords
    <job>/<mag>x_<ps>px_<overlap>px_overlap/features_<encoder>/<slide>.h5    features + coords

(the middle folder is ``--coords_dir`` when given). The GeoJSON is a geopandas
``GeoDataFrame.to_file(driver="GeoJSON")``: a ``FeatureCollection``, one ``Feature`` per tissue
piece with ``properties.tissue_id`` (int) and a ``Polygon`` geometry in level-0 pixels
(exterior ring, then hole rings). ``coords`` are int64 [N, 2], the level-0 (x, y) of each
patch's top-left corner, with attributes ``patch_size`` (px at the target magnification),
``patch_size_level0``, ``level0_magnification``, ``target_magnification``, ``overlap``, ``name``
(the slide), ``level0_width``, ``level0_height``. Trident keeps every patch whose square
touches the tissue (``min_tissue_proportion`` 0 by default), so a kept patch's centre can lie
outside every piece.

Rule (DESIGN §3): a patch belongs to the piece its centre (top-left + ``patch_size_level0`` / 2)
lies in — inside the exterior ring and in none of its holes — else to the nearest piece
(distance from the centre to the piece's rings). The fragment id is the piece's
``tissue_id`` (the feature's position when ids are missing or repeated). A ``MultiPolygon``
(a file edited in QuPath) is one piece.
"""
from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.path import Path as MplPath

from ..errors import PathalignError

GEOJSON_DIR = "contours_geojson"


class FragmentFallbackWarning(UserWarning):
    """Fragment ids had to be derived from the patch grid (no tissue pieces found); names the slide."""


class TissueGeoJSONError(PathalignError, ValueError):
    """A tissue GeoJSON that cannot be used; the message names the file."""


@dataclass
class TissuePiece:
    """One tissue piece: its id and polygons, each a list of rings ``[K, 2]`` (exterior first, then holes)."""

    tissue_id: int
    polygons: list[list[np.ndarray]]


def find_tissue_geojson(path: str | Path, slide: str | None = None) -> Path | None:
    """The Trident tissue GeoJSON of the patch file ``path``, or None.

    Looks for ``contours_geojson/<slide>.geojson`` in the file's folder and up to two folders
    above it (a features file sits in ``<job>/<coords_dir>/features_<encoder>/``, a coords file
    in ``<job>/<coords_dir>/patches/``). The slide name is ``slide`` (the coords attribute
    ``name``) or the file's stem (without Trident's ``_patches`` suffix).
    """
    path = Path(path)
    names = [n for n in dict.fromkeys([slide, path.stem, path.stem.removesuffix("_patches")]) if n]
    for folder in list(path.parents)[:3]:
        for name in names:
            candidate = folder / GEOJSON_DIR / f"{name}.geojson"
            if candidate.is_file():
                return candidate
    return None


def _rings(coordinates, path: Path, where: str) -> list[np.ndarray]:
    rings = []
    for ring in coordinates:
        arr = np.asarray(ring, dtype=np.float64)
        if arr.ndim != 2 or arr.shape[1] < 2 or len(arr) < 3:
            raise TissueGeoJSONError(f"{path}: {where} has a ring that is not a list of >= 3 [x, y] points")
        rings.append(arr[:, :2])
    if not rings:
        raise TissueGeoJSONError(f"{path}: {where} has no exterior ring")
    return rings


def read_tissue_geojson(path: str | Path) -> list[TissuePiece]:
    """The tissue pieces of a Trident ``contours_geojson/<slide>.geojson`` (see module docstring).

    Raises:
        TissueGeoJSONError: unreadable JSON, not a FeatureCollection, or a geometry that is not
            a (Multi)Polygon.
    """
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise TissueGeoJSONError(f"{path}: not a readable GeoJSON file ({e})") from None
    if not isinstance(doc, dict) or doc.get("type") != "FeatureCollection" or not isinstance(doc.get("features"), list):
        raise TissueGeoJSONError(f"{path}: not a GeoJSON FeatureCollection")
    pieces, ids = [], []
    for i, feat in enumerate(doc["features"]):
        geom = (feat or {}).get("geometry") or {}
        kind, coords = geom.get("type"), geom.get("coordinates")
        where = f"feature {i}"
        if kind == "Polygon":
            polygons = [_rings(coords, path, where)]
        elif kind == "MultiPolygon":
            polygons = [_rings(p, path, where) for p in coords]
        else:
            raise TissueGeoJSONError(f"{path}: {where} is a {kind!r}, not a Polygon or MultiPolygon")
        pieces.append(TissuePiece(i, polygons))
        ids.append((feat.get("properties") or {}).get("tissue_id"))
    usable = all(isinstance(t, (int, float)) and float(t).is_integer() and t >= 0 for t in ids)
    if usable and len(set(int(t) for t in ids)) == len(ids):
        for piece, t in zip(pieces, ids):
            piece.tissue_id = int(t)
    return pieces


def _inside(points: np.ndarray, rings: list[np.ndarray]) -> np.ndarray:
    """Points inside the exterior ring and in none of the holes."""
    inside = MplPath(rings[0]).contains_points(points)
    for hole in rings[1:]:
        if inside.any():
            inside[inside] &= ~MplPath(hole).contains_points(points[inside])
    return inside


def _distance_to_rings(points: np.ndarray, rings: list[np.ndarray], chunk: int = 1 << 22) -> np.ndarray:
    """Euclidean distance from each point [M, 2] to the nearest segment of ``rings``."""
    a = np.concatenate([r for r in rings])  # [S, 2] segment starts
    b = np.concatenate([np.roll(r, -1, axis=0) for r in rings])  # [S, 2] segment ends (rings closed)
    ab = b - a
    denom = np.maximum((ab ** 2).sum(axis=1), 1e-12)
    out = np.empty(len(points))
    step = max(1, chunk // max(len(a), 1))
    for s in range(0, len(points), step):
        p = points[s:s + step, None, :]  # [m, 1, 2]
        t = np.clip(((p - a) * ab).sum(-1) / denom, 0.0, 1.0)  # [m, S]
        d = p - (a + t[..., None] * ab)  # [m, S, 2]
        out[s:s + step] = np.sqrt((d ** 2).sum(-1).min(axis=1))
    return out


def assign_to_pieces(centres: np.ndarray, pieces: list[TissuePiece]) -> np.ndarray:
    """The ``tissue_id`` of the piece each centre [N, 2] lies in, else of the nearest piece.

    Args:
        centres: level-0 (x, y) patch centres.
        pieces: from :func:`read_tissue_geojson` (at least one).

    Returns:
        int64 [N] fragment ids.
    """
    centres = np.asarray(centres, np.float64).reshape(-1, 2)
    best = np.full(len(centres), -1, np.int64)
    for piece in pieces:
        todo = best < 0
        if not todo.any():
            break
        hit = np.zeros(int(todo.sum()), bool)
        for rings in piece.polygons:
            lo, hi = rings[0].min(axis=0), rings[0].max(axis=0)
            pts = centres[todo]
            near = ((pts >= lo) & (pts <= hi)).all(axis=1)
            if near.any():
                hit[near] |= _inside(pts[near], rings)
        best[np.flatnonzero(todo)[hit]] = piece.tissue_id
    outside = np.flatnonzero(best < 0)
    if len(outside):
        dist = np.stack([np.min([_distance_to_rings(centres[outside], rings) for rings in piece.polygons], axis=0)
                         for piece in pieces])  # [pieces, M]
        ids = np.array([p.tissue_id for p in pieces], np.int64)
        best[outside] = ids[dist.argmin(axis=0)]
    return best


_CACHE: OrderedDict[tuple, np.ndarray] = OrderedDict()  # training re-reads a slide every epoch
_CACHE_SIZE = 256


def trident_fragments(path: str | Path, coords: np.ndarray, attrs: dict) -> tuple[np.ndarray | None, str | None]:
    """Fragment ids of a patch file's ``coords`` from Trident's tissue GeoJSON, if one is found.

    Args:
        path: the coords/features HDF5 file.
        coords: its [N, 2] level-0 top-left coordinates.
        attrs: its attributes (``patch_size_level0`` required; ``name`` used when present).

    Returns:
        ``(fragment int64 [N], "trident-geojson:<path>")``, or ``(None, None)`` when no GeoJSON with at
        least one piece lies where Trident writes it.

    Raises:
        TissueGeoJSONError: the GeoJSON exists but cannot be used.
    """
    name = attrs.get("name")
    geojson = find_tissue_geojson(path, str(name) if name not in (None, "None", "") else None)
    if geojson is None:
        return None, None
    st = geojson.stat()
    xy = np.ascontiguousarray(coords, np.float64).reshape(-1, 2)
    half = float(attrs["patch_size_level0"]) / 2.0
    key = (str(geojson), st.st_mtime_ns, st.st_size, half, hashlib.blake2b(xy.tobytes(), digest_size=16).hexdigest())
    if key not in _CACHE:
        pieces = read_tissue_geojson(geojson)
        _CACHE[key] = assign_to_pieces(xy + half, pieces) if pieces else np.zeros(0, np.int64)
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    frag = _CACHE[key]
    if len(frag) != len(xy):  # a GeoJSON without pieces
        return None, None
    return frag.copy(), f"trident-geojson:{geojson}"
