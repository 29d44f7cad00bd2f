"""Molecular matrices on disk: one float32 patients x features matrix per HDF5 file, read in column blocks.

Layout of a matrix file (``<modality>.h5`` in a cohort folder)::

    values     float32 [n_patients, n_features], chunked (up to 256 rows x 1024 columns), NaN = missing
    patients   UTF-8 strings [n_patients]
    features   UTF-8 strings [n_features]
    attrs      format = "pathalign-matrix", version, and the writer's own attributes (a build id)

Reading it back costs memory in proportion to what is read: :meth:`MatrixStore.column_blocks`
streams all features a block of columns at a time, :meth:`MatrixStore.read` returns only the
rows and columns asked for. (A wide Parquet file, by contrast, is read column by column with a
per-column overhead: 60,000 columns x 1,000 rows took 14-16 GB.) Files are written atomically.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd

from .atomic import atomic_path

FORMAT = "pathalign-matrix"
VERSION = 1
CHUNK_ROWS, CHUNK_COLS = 256, 1024
BLOCK_BYTES = 32 << 20  # float64 working size of one column block in :meth:`MatrixStore.column_blocks`


class MatrixStoreError(ValueError):
    """A matrix file that is missing, unreadable or not in this layout (the message names it)."""


def write_matrix(path: str | Path, values: np.ndarray, patients: Sequence[str], features: Sequence[str],
                 attrs: dict[str, Any] | None = None) -> None:
    """Write ``values`` (patients x features, any float dtype, NaN = missing) as float32, atomically.

    Args:
        path: the file to write (replaced if it exists).
        values: ``[len(patients), len(features)]``; converted to float32 one column block at a time.
        patients: row names (unique).
        features: column names (unique).
        attrs: extra file attributes (strings or numbers), e.g. a build id.

    Raises:
        MatrixStoreError: the shape does not match the names, or a name is repeated.
    """
    values = np.asarray(values)
    n, f = len(patients), len(features)
    if values.shape != (n, f):
        raise MatrixStoreError(f"{path}: values of shape {values.shape} for {n} patients x {f} features")
    for what, names in (("patient", patients), ("feature", features)):
        if len(set(names)) != len(names):
            dup = pd.Index(names)[pd.Index(names).duplicated()][0]
            raise MatrixStoreError(f"{path}: {what} {dup!r} appears more than once")
    text = h5py.string_dtype()
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as h:
        h.attrs.update({"format": FORMAT, "version": VERSION, **(attrs or {})})
        h.create_dataset("patients", data=np.array(list(map(str, patients)), dtype=object), dtype=text)
        h.create_dataset("features", data=np.array(list(map(str, features)), dtype=object), dtype=text)
        chunks = (max(1, min(n, CHUNK_ROWS)), max(1, min(f, CHUNK_COLS))) if n and f else None
        ds = h.create_dataset("values", shape=(n, f), dtype=np.float32, chunks=chunks, fillvalue=np.nan)
        step = CHUNK_COLS * 4
        for a in range(0, f, step):
            ds[:, a:a + step] = values[:, a:a + step].astype(np.float32)


def matrix_attrs(path: str | Path) -> dict[str, Any]:
    """The attributes of a matrix file, without reading its names or values.

    Raises:
        MatrixStoreError: the file is missing, not HDF5, or not in this layout.
    """
    path = Path(path)
    if not path.is_file():
        raise MatrixStoreError(f"{path}: no such matrix file")
    try:
        with h5py.File(path, "r") as h:
            attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in h.attrs.items()}
    except OSError as e:
        raise MatrixStoreError(f"{path}: not a readable HDF5 file ({e})") from None
    if attrs.get("format") != FORMAT:
        raise MatrixStoreError(f"{path}: not a pathalign matrix file (no '{FORMAT}' attribute)")
    return attrs


class MatrixStore:
    """A matrix file opened for reading (a context manager; also closes on garbage collection).

    Args:
        path: the file (written by :func:`write_matrix`).

    Raises:
        MatrixStoreError: the file is missing, not HDF5, or not in this layout.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise MatrixStoreError(f"{self.path}: no such matrix file")
        try:
            self._h5 = h5py.File(self.path, "r")
        except OSError as e:
            raise MatrixStoreError(f"{self.path}: not a readable HDF5 file ({e})") from None
        h = self._h5
        if h.attrs.get("format") != FORMAT or not all(k in h for k in ("values", "patients", "features")):
            self.close()
            raise MatrixStoreError(f"{self.path}: not a pathalign matrix file (no '{FORMAT}' values/patients/features)")
        if int(h.attrs.get("version", 0)) > VERSION:
            self.close()
            raise MatrixStoreError(f"{self.path}: matrix format version {h.attrs['version']} is newer than this "
                                   f"pathalign reads ({VERSION}); upgrade pathalign")
        self._values = h["values"]
        self.patients: list[str] = list(h["patients"].asstr()[:])
        self.features: list[str] = list(h["features"].asstr()[:])
        self.attrs: dict[str, Any] = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in h.attrs.items()}
        self._col = {f: j for j, f in enumerate(self.features)}
        self._row = {p: i for i, p in enumerate(self.patients)}

    @property
    def shape(self) -> tuple[int, int]:
        """``(n_patients, n_features)``."""
        return tuple(self._values.shape)

    def _positions(self, names: Sequence[str] | None, index: dict[str, int], what: str) -> np.ndarray:
        if names is None:
            return np.arange(len(index))
        missing = [n for n in names if n not in index]
        if missing:
            raise KeyError(f"{self.path}: no {what} {missing[:5]}")
        return np.array([index[n] for n in names], dtype=np.int64)

    def row_index(self, patients: Sequence[str] | None) -> np.ndarray:
        """Row positions of ``patients`` (None: all, in file order); an unknown patient is a KeyError."""
        return self._positions(patients, self._row, "row for patient(s)")

    def column_index(self, features: Sequence[str] | None) -> np.ndarray:
        """Column positions of ``features`` (None: all); an unknown feature is a KeyError."""
        return self._positions(features, self._col, "column for feature(s)")

    def block_width(self, n_rows: int) -> int:
        """Columns per block of :meth:`column_blocks` for ``n_rows`` rows: a multiple of the chunk width
        holding about ``BLOCK_BYTES`` of float64, and never 1 unless the matrix has one column."""
        width = max(CHUNK_COLS, (BLOCK_BYTES // (8 * max(1, n_rows))) // CHUNK_COLS * CHUNK_COLS)
        return max(2, width)

    def column_blocks(self, patients: Sequence[str] | None = None,
                      width: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
        """Every column, ``width`` at a time: yields ``(first column, float32 [len(patients), w])``.

        Rows come in the order of ``patients`` (None: all, in file order). A last block of one
        column is merged into the one before it, so blocks are at least 2 wide (a reduction over
        the rows of a one-column array takes another summation order in numpy).
        """
        rows = self.row_index(patients)
        f = self.shape[1]
        width = max(2, int(width or self.block_width(len(rows))))
        starts = list(range(0, f, width))
        if len(starts) > 1 and f - starts[-1] == 1:
            starts.pop()
        for k, a in enumerate(starts):
            b = starts[k + 1] if k + 1 < len(starts) else f
            block = self._values[:, a:b]  # [n_file, b - a]
            yield a, block if patients is None else block[rows]

    def read(self, patients: Sequence[str] | None = None, features: Sequence[str] | None = None) -> np.ndarray:
        """``float32 [len(patients), len(features)]`` in the order asked (None: all), reading only the
        column blocks that hold a requested feature."""
        rows = self.row_index(patients)
        cols = self.column_index(features)
        out = np.empty((len(rows), len(cols)), np.float32)
        if not len(cols) or not len(rows):
            return out
        order = np.argsort(cols, kind="stable")
        sorted_cols = cols[order]
        width = self.block_width(len(rows))
        lo = 0
        while lo < len(sorted_cols):
            a = int(sorted_cols[lo]) // width * width
            hi = int(np.searchsorted(sorted_cols, a + width))
            block = self._values[:, a:a + width]  # [n_file, <= width]
            out[:, order[lo:hi]] = block[rows][:, sorted_cols[lo:hi] - a]
            lo = hi
        return out

    def frame(self, patients: Sequence[str] | None = None, features: Sequence[str] | None = None) -> pd.DataFrame:
        """:meth:`read` as a DataFrame (index ``case_id``, one float32 block)."""
        rows = list(self.patients if patients is None else patients)
        cols = list(self.features if features is None else features)
        return pd.DataFrame(self.read(rows, cols), index=pd.Index(rows, name="case_id"), columns=pd.Index(cols),
                            copy=False)

    def close(self) -> None:
        """Close the file (idempotent)."""
        h = getattr(self, "_h5", None)
        if h is not None and h.id.valid:
            h.close()

    def __enter__(self) -> MatrixStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 - at interpreter exit h5py may be gone already
            pass

    def __repr__(self) -> str:
        return f"MatrixStore({self.path}, {self.shape[0]} patients x {self.shape[1]} features)"
