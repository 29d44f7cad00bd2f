"""coords.h5 / features.h5 in pathalign's layout (DESIGN §3), and readers of other tools' files.

``read_patch_features(path)`` opens, alike:

* pathalign files: ``coords`` [N,2], ``fragment`` [N], ``features`` [N,C], attrs on ``coords``;
* Trident files: ``coords`` with ``patch_size_level0`` (and friends) and ``features``, no fragments;
* CLAM files: ``coords`` with ``patch_size``, ``patch_level``, ``downsample``;
* EXAONE Path 2.5 files: ``contour_index`` in place of ``fragment``.

Where fragment ids are missing they come from the tissue pieces Trident writes beside its
patches (``io.trident``), and only failing that from the connected components of the
patch grid (8-neighbour, step ``patch_size_level0``), with a ``FragmentFallbackWarning``
naming the slide.
"""
from __future__ import annotations

import io
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from ..errors import PathalignError
from .atomic import atomic_path
from .hdf5 import open_hdf5
from .trident import GEOJSON_DIR, FragmentFallbackWarning, trident_fragments


class FeatureFileError(PathalignError, ValueError):
    """A patch coords/features file that cannot be read; the message names the file."""


@dataclass
class PatchFeatures:
    """Patches of one slide: ``features`` ([N,C] or None), ``coords`` [N,2] level 0, ``fragment`` [N], ``attrs``."""

    features: np.ndarray | None
    coords: np.ndarray
    fragment: np.ndarray
    attrs: dict = field(default_factory=dict)
    path: Path | None = None

    def __len__(self) -> int:
        return len(self.coords)

    def as_inputs(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(features float32 [N,C], coords [N,2], fragment [N])``: what the slide encoder takes."""
        if self.features is None:
            raise FeatureFileError(f"{self.path}: has coords but no features")
        return np.asarray(self.features, np.float32), self.coords, self.fragment


def _close_gaps(v: np.ndarray) -> np.ndarray:
    """Rank-compress integer values keeping steps of 0 and 1 and shrinking larger gaps to 2 (adjacency kept)."""
    u, inv = np.unique(v, return_inverse=True)
    steps = np.minimum(np.diff(u), 2)
    return np.concatenate([[0], np.cumsum(steps)])[inv.reshape(-1)]


def grid_fragments(coords: np.ndarray, step: float) -> np.ndarray:
    """Fragment ids as 8-connected components of the patch grid (ids in reading order of first patch).

    Memory and time grow with the number of patches only, never with the extent of the grid: cells
    are rank-compressed per axis (gaps wider than one cell shrink to two, which keeps neighbours and
    non-neighbours apart), neighbours are found by sorted-key lookup and joined by a sparse graph.

    Args:
        coords: ``[N, 2]`` level-0 (x, y).
        step: the grid step (level-0 patch side).

    Returns:
        int64 ``[N]``: 0 for the component met first in reading order (top to bottom, left to right), ...
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = len(coords)
    if n == 0:
        return np.zeros(0, np.int64)
    cells = np.round((coords - coords.min(axis=0)) / step).astype(np.int64)  # [N, 2] grid (x, y)
    x, y = _close_gaps(cells[:, 0]), _close_gaps(cells[:, 1])  # each < 2N
    width = int(x.max()) + 3  # room for the x - 1 and x + 1 neighbours of any cell
    key = y * width + (x + 1)  # raster order: rows, then columns
    order = np.argsort(key, kind="stable")
    sorted_key = key[order]
    rows, cols = [np.arange(n)], [np.arange(n)]
    for dx, dy in ((0, 0), (1, 0), (-1, 1), (0, 1), (1, 1)):  # same cell, and the forward half of the 8 neighbours
        want = key + dy * width + dx
        pos = np.minimum(np.searchsorted(sorted_key, want), n - 1)
        hit = sorted_key[pos] == want
        rows.append(np.nonzero(hit)[0])
        cols.append(order[pos[hit]])
    r, c = np.concatenate(rows), np.concatenate(cols)
    graph = coo_matrix((np.ones(len(r), np.int8), (r, c)), shape=(n, n)).tocsr()
    _, comp = connected_components(graph, directed=False)
    first = np.full(comp.max() + 1, n, np.int64)  # raster position of each component's first cell
    np.minimum.at(first, comp[order], np.arange(n))
    rank = np.empty_like(first)
    rank[np.argsort(first, kind="stable")] = np.arange(len(first))
    return rank[comp].astype(np.int64)


def validate_coords(coords: np.ndarray, path: Path | str) -> np.ndarray:
    """``coords`` as int64 ``[N, 2]``, or a FeatureFileError naming ``path`` and the first bad row.

    Coordinates must be finite, non-negative whole numbers of level-0 pixels (below 2**53, where
    floats stop holding every integer); float files with whole values are accepted.
    """
    arr = np.asarray(coords)
    if arr.dtype.kind in "iu":
        bad = (arr < 0).any(axis=1)
        why = "negative"
    elif arr.dtype.kind == "f":
        with np.errstate(invalid="ignore"):
            bad = ~np.isfinite(arr).all(axis=1) | (arr < 0).any(axis=1) | (arr >= 2.0 ** 53).any(axis=1)
            bad |= (np.floor(arr) != arr).any(axis=1)
        why = "not finite, negative or not whole pixels"
    else:
        raise FeatureFileError(f"{path}: coords must be numbers, got dtype {arr.dtype}")
    if bad.any():
        i = int(np.argmax(bad))
        raise FeatureFileError(f"{path}: coords row {i} is {arr[i].tolist()} ({why}; "
                               f"{int(bad.sum())} bad row(s) of {len(arr)})")
    return arr.astype(np.int64)


def _attrs(ds) -> dict:
    out = {}
    for k, v in ds.attrs.items():
        if isinstance(v, bytes):
            v = v.decode()
        elif isinstance(v, np.generic):
            v = v.item()
        out[k] = v
    return out


def read_patch_features(path: str | Path, features: bool = True) -> PatchFeatures:
    """Open a pathalign, Trident, CLAM or EXAONE Path coords/features HDF5 file (see module docstring).

    ``features=False`` reads coordinates, fragments and attributes only (``.features`` is None), for
    readers that fetch feature rows themselves.
    """
    path = Path(path)
    with open_hdf5(path, FeatureFileError) as fh:
        if "coords" not in fh:
            raise FeatureFileError(f"{path}: no 'coords' dataset (datasets: {list(fh.keys())})")
        coords = np.asarray(fh["coords"][()])
        if coords.ndim == 3 and coords.shape[0] == 1:  # some tools store [1, N, 2]
            coords = coords[0]
        if coords.ndim != 2 or coords.shape[1] != 2:
            raise FeatureFileError(f"{path}: coords must be [N, 2], got {coords.shape}")
        coords = validate_coords(coords, path)
        attrs = {**_attrs(fh), **_attrs(fh["coords"])}
        feats = None
        if features and "features" in fh:
            feats = np.asarray(fh["features"][()])
            if feats.ndim == 3 and feats.shape[0] == 1:
                feats = feats[0]
            if feats.shape[0] != coords.shape[0]:
                raise FeatureFileError(f"{path}: {feats.shape[0]} feature rows but {coords.shape[0]} coords")
        frag = None
        for key in ("fragment", "contour_index"):
            if key in fh:
                frag = np.asarray(fh[key][()]).reshape(-1).astype(np.int64)
                if frag.shape[0] != coords.shape[0]:
                    raise FeatureFileError(f"{path}: {frag.shape[0]} {key} ids but {coords.shape[0]} coords")
    if "patch_size_level0" not in attrs:
        if "patch_size" in attrs and "downsample" in attrs:  # CLAM: patch_size at patch_level, downsample per axis
            ds = np.atleast_1d(np.asarray(attrs["downsample"], float))
            attrs["patch_size_level0"] = int(round(float(attrs["patch_size"]) * float(ds[0])))
        elif "patch_size" in attrs and "patch_level" in attrs and int(attrs["patch_level"]) == 0:
            attrs["patch_size_level0"] = int(attrs["patch_size"])
        elif len(coords) > 1:  # infer the grid step from the coordinates
            diffs = np.diff(np.unique(coords[:, 0]))
            diffs = diffs[diffs > 0]
            if len(diffs) == 0:
                diffs = np.diff(np.unique(coords[:, 1]))
                diffs = diffs[diffs > 0]
            if len(diffs) == 0:
                raise FeatureFileError(f"{path}: no patch_size_level0 attribute and it cannot be inferred")
            attrs["patch_size_level0"] = int(diffs.min())
            attrs["patch_size_level0_inferred"] = True
        else:
            attrs["patch_size_level0"] = int(attrs.get("patch_size", 256))
    if frag is None:  # the producer's tissue pieces (Trident GeoJSON), else the grid with a warning
        frag, attrs["fragment_source"] = trident_fragments(path, coords, attrs)
    if frag is None:
        warnings.warn(f"{path}: slide {attrs.get('name') or path.stem!r} has no fragment ids and no tissue GeoJSON "
                      f"(Trident's <job>/{GEOJSON_DIR}/<slide>.geojson); fragments are the 8-connected components "
                      "of the patch grid, which can merge tissue pieces", FragmentFallbackWarning, stacklevel=2)
        frag = grid_fragments(coords.astype(np.float64), float(attrs["patch_size_level0"]))
        attrs["fragment_source"] = "grid-connected-components"
    return PatchFeatures(feats, coords.astype(np.int64), frag, attrs, path)


def write_patch_file(path: str | Path, coords: np.ndarray, fragment: np.ndarray, coord_attrs: dict,
                     features: np.ndarray | None = None, file_attrs: dict | None = None) -> None:
    """Write a pathalign coords/features file atomically; ``complete`` is set only on the finished file.

    The HDF5 file is built in memory and its bytes are then written with ordinary Python I/O to a
    temporary name that replaces ``path`` on success. HDF5 never touches the disk, so a full disk or
    a file-size limit raises a plain ``OSError`` naming ``path`` (HDF5 closing a file whose write
    failed can crash the process) and no partial file is left under either name.

    Args:
        path: the target ``.h5`` file.
        coords: int ``[N, 2]`` level-0 (x, y).
        fragment: int ``[N]`` fragment id per patch.
        coord_attrs: attributes of the ``coords`` dataset (``None`` values are skipped).
        features: optional ``[N, C]`` features.
        file_attrs: attributes of the file (``None`` values are skipped).

    Raises:
        OSError: the file cannot be written (the message names ``path``).
    """
    path = Path(path)
    buf = io.BytesIO()
    with h5py.File(buf, "w") as fh:
        ds = fh.create_dataset("coords", data=np.asarray(coords, np.int64).reshape(-1, 2))
        for k, v in coord_attrs.items():
            if v is not None:
                ds.attrs[k] = v
        del ds
        fh.create_dataset("fragment", data=np.asarray(fragment, np.int64).reshape(-1))
        if features is not None:
            fh.create_dataset("features", data=features, chunks=True if len(features) else None)
        for k, v in (file_attrs or {}).items():
            if v is not None:
                fh.attrs[k] = v
        fh.attrs["complete"] = True
    image = buf.getbuffer()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            f.write(image)
    except OSError as e:
        raise OSError(e.errno, f"{path}: cannot write ({e.strerror or e})") from None
    finally:
        image.release()


def is_complete(path: str | Path) -> bool:
    """Whether ``path`` is a finished pathalign file (a Trident/CLAM file with coords also counts)."""
    path = Path(path)
    if not path.is_file():
        return False
    try:
        with h5py.File(path, "r") as fh:
            if "complete" in fh.attrs:
                return bool(fh.attrs["complete"])
            return "coords" in fh  # another tool's file: complete if readable
    except OSError:
        return False
