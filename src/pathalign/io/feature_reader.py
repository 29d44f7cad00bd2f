"""Bounded, scale-aware reading of patch features for training.

A training step needs ``max_tokens`` rows of one slide per patient, not the whole slide: the
row subset is chosen from the file's length alone, then only those rows are read (one sorted
read). Per process, a :class:`FeatureReader` keeps

* the HDF5 files open (up to ``max_open``, least recently used closed first);
* a cache bounded in bytes: each slide's index (coordinates and fragment ids, always small)
  least-recently-used, and whole feature matrices in their stored dtype (float16 stays
  float16) admitted while they fit, never evicted — under random access an evicting cache
  would re-read whole slides it then throws away, so "fill, then read rows" is the cheaper
  policy. A cohort that fits in the budget is read from disk once, as before.

Data-loading workers each get ``cache_bytes / processes`` (:meth:`FeatureReader.share`), so the
total stays within the option however many workers run. Handles and caches belong to the process
that made them: a forked worker starts its own.
"""
from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from ..io.features import FeatureFileError, read_patch_features

MiB = 1 << 20


def default_cache_bytes() -> int:
    """The default cache budget: 5 % of physical memory, at most 4 GiB (all processes together)."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        total = 8 << 30
    return int(min(0.05 * total, 4 << 30))


@dataclass
class SlideIndex:
    """What is known about a slide without its features: ``n`` patches of ``dim`` dims, coords, fragments."""

    n: int
    dim: int
    coords: np.ndarray
    fragment: np.ndarray

    @property
    def nbytes(self) -> int:
        return self.coords.nbytes + self.fragment.nbytes


class FeatureReader:
    """Reads rows of ``<features_dir>/<slide_id>.h5`` with open handles and a byte-bounded cache.

    Args:
        features_dir: folder of features files.
        cache_bytes: budget of all processes together (None: :func:`default_cache_bytes`; 0: no cache
            of features, indexes still kept least-recently-used within a small floor).
        max_open: open files kept per process.
    """

    FEATURE_SHARE = 0.75  # of the budget for whole feature matrices; the rest keeps slide indexes

    def __init__(self, features_dir: str | Path, cache_bytes: int | None = None, max_open: int = 64):
        self.features_dir = Path(features_dir)
        self.cache_bytes = default_cache_bytes() if cache_bytes is None else int(cache_bytes)
        if self.cache_bytes < 0:
            raise ValueError(f"feature cache budget must be >= 0 bytes, got {self.cache_bytes}")
        self.max_open = max(1, int(max_open))
        self.processes = 1
        self._pid: int | None = None
        self._reset()

    # ------------------------------------------------------------------ process-local state
    def _reset(self) -> None:
        self._pid = os.getpid()
        self._handles: OrderedDict[str, h5py.File] = OrderedDict()
        self._index: OrderedDict[str, SlideIndex] = OrderedDict()
        self._feats: dict[str, np.ndarray] = {}
        self._index_bytes = 0
        self._feat_bytes = 0
        self.stats = {"rows_read": 0, "full_reads": 0, "cache_hits": 0}

    def _own(self) -> None:
        if self._pid != os.getpid():  # a forked worker: never touch the parent's HDF5 handles
            self._handles.clear()
            self._reset()

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        for k in ("_handles", "_index", "_feats"):
            state[k] = OrderedDict() if k != "_feats" else {}
        state.update(_index_bytes=0, _feat_bytes=0, _pid=None)
        return state

    def share(self, processes: int) -> None:
        """Split the budget over ``processes`` processes that each hold a reader (e.g. loader workers)."""
        self.processes = max(1, int(processes))

    @property
    def budget(self) -> int:
        """This process's share of the cache budget, in bytes."""
        return self.cache_bytes // self.processes

    @property
    def cached_bytes(self) -> int:
        return self._index_bytes + self._feat_bytes

    def close(self) -> None:
        """Close this process's open files."""
        if self._pid == os.getpid():
            for fh in self._handles.values():
                fh.close()
        self._handles.clear()

    # ------------------------------------------------------------------ files
    def path(self, slide_id: str) -> Path:
        return self.features_dir / f"{slide_id}.h5"

    def _dataset(self, slide_id: str):
        key = str(self.path(slide_id))
        fh = self._handles.pop(key, None)
        if fh is None or not fh.id.valid:
            try:
                fh = h5py.File(key, "r")
            except OSError as e:
                raise FeatureFileError(f"{key}: not a readable HDF5 file ({e})") from None
            while len(self._handles) >= self.max_open:
                self._handles.popitem(last=False)[1].close()
        self._handles[key] = fh
        if "features" not in fh:
            raise FeatureFileError(f"{key}: has coords but no features (slide {slide_id})")
        return fh["features"]

    # ------------------------------------------------------------------ reading
    def index(self, slide_id: str) -> SlideIndex:
        """Coordinates, fragment ids, patch count and feature dim of a slide (cached)."""
        self._own()
        idx = self._index.pop(slide_id, None)
        if idx is None:
            pf = read_patch_features(self.path(slide_id), features=False)
            ds = self._dataset(slide_id)
            shape = ds.shape[1:] if ds.ndim == 3 and ds.shape[0] == 1 else ds.shape
            if len(shape) != 2 or shape[0] != len(pf):
                raise FeatureFileError(f"{self.path(slide_id)}: features of shape {ds.shape} for {len(pf)} coords")
            idx = SlideIndex(int(shape[0]), int(shape[1]), pf.coords, pf.fragment)
            self._index_bytes += idx.nbytes
        self._index[slide_id] = idx
        while self.cached_bytes > self.budget and len(self._index) > 1:
            self._index_bytes -= self._index.popitem(last=False)[1].nbytes
        return idx

    def n_patches(self, slide_id: str) -> int:
        return self.index(slide_id).n

    def read(self, slide_id: str, rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(features float32 [n,C], coords int64 [n,2], fragment int64 [n])`` of ``rows`` (None: all).

        Args:
            slide_id: the slide (file ``<features_dir>/<slide_id>.h5``).
            rows: strictly increasing row indices, or None for the whole slide.
        """
        idx = self.index(slide_id)
        if rows is not None:
            rows = np.asarray(rows, np.int64)
            if len(rows) and (rows[0] < 0 or rows[-1] >= idx.n or (len(rows) > 1 and not (np.diff(rows) > 0).all())):
                raise ValueError(f"slide {slide_id}: rows must be increasing indices in [0, {idx.n})")
        feats = self._feats.get(slide_id)
        if feats is not None:
            self.stats["cache_hits"] += 1
            sub = feats if rows is None else feats[rows]
        else:
            ds = self._dataset(slide_id)
            squeeze = ds.ndim == 3
            nbytes = idx.n * idx.dim * ds.dtype.itemsize
            admit = self._feat_bytes + nbytes <= self.FEATURE_SHARE * self.budget and self.cached_bytes + nbytes <= self.budget
            if rows is None or admit:
                full = np.asarray(ds[0] if squeeze else ds[()])
                self.stats["full_reads"] += 1
                if admit:
                    self._feats[slide_id] = full
                    self._feat_bytes += full.nbytes
                sub = full if rows is None else full[rows]
            else:
                sub = _read_rows(ds, rows, squeeze)
                self.stats["rows_read"] += len(rows)
        if rows is None:
            return np.asarray(sub, np.float32), idx.coords, idx.fragment
        return np.asarray(sub, np.float32), idx.coords[rows], idx.fragment[rows]


def _read_rows(ds, rows: np.ndarray, squeeze: bool, slab_bytes: int = 16 * MiB) -> np.ndarray:
    """Rows ``rows`` (increasing) of a ``[N, C]`` (or ``[1, N, C]``) dataset.

    Contiguous datasets take one point selection. Chunked ones are read as slabs of whole row-chunks
    (the rows' chunks, neighbours merged up to ``slab_bytes``): a point selection on a file whose
    chunks split the columns costs one small read per row and chunk, 10-20x slower than the slab.
    """
    if len(rows) == 0:
        return np.zeros((0, ds.shape[-1]), ds.dtype)
    if ds.chunks is None:
        return np.asarray(ds[0, rows] if squeeze else ds[rows])
    step = int(ds.chunks[-2])
    n = ds.shape[-2]
    max_blocks = max(1, slab_bytes // max(1, step * ds.shape[-1] * ds.dtype.itemsize))
    blocks = np.unique(rows // step)
    out, start = [], 0
    while start < len(blocks):  # ranges of consecutive chunk rows, at most max_blocks long
        stop = start + 1
        while stop < len(blocks) and blocks[stop] == blocks[stop - 1] + 1 and stop - start < max_blocks:
            stop += 1
        a, b = int(blocks[start]) * step, min(n, (int(blocks[stop - 1]) + 1) * step)
        slab = ds[0, a:b] if squeeze else ds[a:b]  # [b - a, C]
        mine = rows[(rows >= a) & (rows < b)]
        out.append(slab[mine - a])
        start = stop
    return np.concatenate(out)
