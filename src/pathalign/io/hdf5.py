"""Opening HDF5 files for reading with errors that name the file."""
from __future__ import annotations

from pathlib import Path

import h5py


def open_hdf5(path: str | Path, error: type[Exception], what: str = "file") -> h5py.File:
    """``h5py.File(path, "r")``, or ``error`` naming ``path`` when it is missing or not HDF5.

    Args:
        path: the file.
        error: the exception class to raise (the caller's own expected-error class).
        what: what the file is, for the message ("embeddings file", ...).
    """
    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: no such {what}")
    try:
        return h5py.File(path, "r")
    except OSError as e:
        raise error(f"{path}: not a readable HDF5 file ({e})") from None
