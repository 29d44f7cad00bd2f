"""Up-front checks of a command's output path, so that an unwritable ``--out`` is one clear error
before any work starts (not a traceback after an hour of feature extraction).

Nothing is created: the check finds the nearest existing folder on the way to the path and
writes (then removes) one empty temporary file there.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from ..errors import PathalignError

__all__ = ["OutputPathError", "check_output_dir", "check_output_file"]


class OutputPathError(PathalignError):
    """An output path that cannot be written (a file in the way, a read-only folder or disk)."""


def _nearest_existing(path: Path) -> Path:
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _probe_writable(folder: Path, path: Path, option: str) -> None:
    """Create and remove an empty file in ``folder``; raise :class:`OutputPathError` naming ``path``."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".pathalign-write-check-", dir=folder)
    except OSError as e:
        reason = e.strerror or type(e).__name__
        raise OutputPathError(f"{option} {path}: cannot write in {folder} ({reason})") from None
    os.close(fd)
    os.unlink(probe)


def check_output_dir(path: str | Path, option: str = "--out") -> Path:
    """Check that ``path`` is, or can be created as, a writable folder; create nothing.

    Args:
        path: the output folder a command will write into.
        option: the command-line option that gave it, named in the error.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        OutputPathError: ``path`` or one of its ancestors is a file, or the nearest existing
            folder cannot be written (read-only folder or file system, full disk).
    """
    path = Path(path)
    base = _nearest_existing(path)
    if not base.is_dir():
        where = "is a file" if base == path else f"cannot be created: {base} is a file"
        raise OutputPathError(f"{option} {path}: {where}, not a folder")
    _probe_writable(base, path, option)
    return path


def check_output_file(path: str | Path, option: str = "--out") -> Path:
    """Check that the file ``path`` can be written (its folder exists or can be created); create nothing.

    Args:
        path: the output file a command will write.
        option: the command-line option that gave it, named in the error.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        OutputPathError: ``path`` is a folder, a parent is a file, or the folder cannot be written.
    """
    path = Path(path)
    if path.is_dir():
        raise OutputPathError(f"{option} {path}: is a folder, expected a file name")
    check_output_dir(path.parent, option)
    return path
