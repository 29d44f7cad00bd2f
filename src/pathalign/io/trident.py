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
from scipy.spatial import cKDTree

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


def _segment_distance(p: np.ndarray, a: np.ndarray, ab: np.ndarray) -> np.ndarray:
    """Distance from points ``p`` [..., 2] to segments ``a + t * ab`` (t in [0, 1]), elementwise."""
    dx, dy = p[..., 0] - a[..., 0], p[..., 1] - a[..., 1]
    t = np.clip((dx * ab[..., 0] + dy * ab[..., 1]) / np.maximum((ab ** 2).sum(-1), 1e-12), 0.0, 1.0)
    return np.hypot(dx - t * ab[..., 0], dy - t * ab[..., 1])


def _distance_to_rings(points: np.ndarray, rings: list[np.ndarray], brute: int = 1 << 20) -> np.ndarray:
    """Exact Euclidean distance from each point [M, 2] to the nearest segment of the closed ``rings``.

    Small problems are brute force. Large ones use two k-d trees: the nearest vertex gives an
    upper bound ``d``; a segment within ``d`` of a point has its midpoint within ``d`` + half the
    longest segment, so only those segments are measured.
    """
    a = np.concatenate(rings)  # [S, 2] segment starts
    ab = np.concatenate([np.roll(r, -1, axis=0) for r in rings]) - a  # [S, 2] segment vectors
    if len(points) * len(a) <= brute:
        return _segment_distance(points[:, None, :], a[None], ab[None]).min(axis=1)  # [M, S] -> [M]
    upper, _ = cKDTree(a).query(points)
    half = float(np.sqrt((ab ** 2).sum(1)).max()) / 2
    near = cKDTree(a + ab / 2).query_ball_point(points, upper + half + 1e-6)
    counts = np.array([len(n) for n in near])
    seg = np.concatenate([np.asarray(n, np.int64) for n in near])  # candidate segments, point after point
    owner = np.repeat(np.arange(len(points)), counts)
    out = np.full(len(points), np.inf)
    np.minimum.at(out, owner, _segment_distance(points[owner], a[seg], ab[seg]))
    return out


def _box_distance(points: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Distance from each point [M, 2] to the box [lo, hi]: a lower bound of the distance to what it holds."""
    gap = np.maximum(np.maximum(lo - points, points - hi), 0.0)  # [M, 2]
    return np.sqrt((gap ** 2).sum(axis=1))


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
        pts = centres[outside]
        nearest = np.full(len(pts), np.inf)
        # exact distances, skipping a piece for points whose distance to its bounding box is already too far
        bounds = [[_box_distance(pts, r[0].min(axis=0), r[0].max(axis=0)) for r in p.polygons] for p in pieces]
        order = np.argsort([np.median(np.min(b, axis=0)) for b in bounds], kind="stable")
        for k in order:
            for rings, lower in zip(pieces[k].polygons, bounds[k]):
                todo = np.flatnonzero(lower < nearest)
                if len(todo) == 0:
                    continue
                d = _distance_to_rings(pts[todo], rings)
                closer = d < nearest[todo]
                nearest[todo[closer]] = d[closer]
                best[outside[todo[closer]]] = pieces[k].tissue_id
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
