"""coords.h5 / features.h5 in pathalign's layout (DESIGN §3), and readers of other tools' files.

``read_patch_features(path)`` opens, alike:

* pathalign files: ``coords`` [N,2], ``fragment`` [N], ``features`` [N,C], attrs on ``coords``;
* Trident files: ``coords`` with ``patch_size_level0`` (and friends) and ``features``, no fragments;
* CLAM files: ``coords`` with ``patch_size``, ``patch_level``, ``downsample``;
* EXAONE Path 2.5 files: ``contour_index`` in place of ``fragment``.

Where fragment ids are missing they are derived as the connected components of the patch
grid (8-neighbour, step ``patch_size_level0``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
from scipy import ndimage

from ..errors import PathalignError
from ..io.atomic import atomic_path


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


def grid_fragments(coords: np.ndarray, step: float) -> np.ndarray:
    """Fragment ids as 8-connected components of the patch grid (ids in reading order of first patch)."""
    if len(coords) == 0:
        return np.zeros(0, np.int64)
    cells = np.round((coords - coords.min(axis=0)) / step).astype(np.int64)  # [N, 2] grid (x, y)
    grid = np.zeros(cells.max(axis=0)[::-1] + 1, bool)  # [rows, cols]
    grid[cells[:, 1], cells[:, 0]] = True
    labels, _ = ndimage.label(grid, structure=np.ones((3, 3), bool))
    return labels[cells[:, 1], cells[:, 0]].astype(np.int64) - 1


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
    if not path.is_file():
        raise FeatureFileError(f"{path}: no such file")
    try:
        fh = h5py.File(path, "r")
    except OSError as e:
        raise FeatureFileError(f"{path}: not a readable HDF5 file ({e})") from None
    with fh:
        if "coords" not in fh:
            raise FeatureFileError(f"{path}: no 'coords' dataset (datasets: {list(fh.keys())})")
        coords = np.asarray(fh["coords"][()])
        if coords.ndim == 3 and coords.shape[0] == 1:  # some tools store [1, N, 2]
            coords = coords[0]
        if coords.ndim != 2 or coords.shape[1] != 2:
            raise FeatureFileError(f"{path}: coords must be [N, 2], got {coords.shape}")
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
    if frag is None:
        frag = grid_fragments(coords.astype(np.float64), float(attrs["patch_size_level0"]))
        attrs["fragment_source"] = "grid-connected-components"
    return PatchFeatures(feats, coords.astype(np.int64), frag, attrs, path)


def write_patch_file(path: str | Path, coords: np.ndarray, fragment: np.ndarray, coord_attrs: dict,
                     features: np.ndarray | None = None, file_attrs: dict | None = None) -> None:
    """Write a pathalign coords/features file atomically; ``complete`` is set only on the finished file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as fh:
        ds = fh.create_dataset("coords", data=np.asarray(coords, np.int64).reshape(-1, 2))
        for k, v in coord_attrs.items():
            if v is not None:
                ds.attrs[k] = v
        fh.create_dataset("fragment", data=np.asarray(fragment, np.int64).reshape(-1))
        if features is not None:
            fh.create_dataset("features", data=features, chunks=True if len(features) else None)
        for k, v in (file_attrs or {}).items():
            if v is not None:
                fh.attrs[k] = v
        fh.attrs["complete"] = True


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
