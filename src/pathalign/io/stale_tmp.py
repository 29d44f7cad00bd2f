"""Leftovers of killed atomic writes: hidden ``.<name>.<pid>.tmp`` files (:mod:`.atomic`), removed safely.

A write killed between creating its temporary file and the rename leaves the temporary file
behind (often empty). :func:`remove_stale_tmp` removes, in the folders it is given (not below
them), only those that

* match the temporary-name pattern of :func:`pathalign.io.atomic.tmp_path`,
* were written by a process that is gone (its pid is not alive here and is not ours), and
* have not been modified for ``min_age`` seconds — a writer in another pid namespace or on
  another machine sharing the folder shows no pid here, but keeps its file's mtime fresh.
"""
from __future__ import annotations

import os
import re
import time
from pathlib import Path

TMP_NAME = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.tmp(\.[^.]+)?$")
MIN_AGE_S = 60.0


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def stale_tmp_files(folder: str | Path, min_age: float = MIN_AGE_S) -> list[Path]:
    """The temporary files of killed writes in ``folder`` (see the module docstring), sorted."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    now, out = time.time(), []
    for p in folder.iterdir():
        m = TMP_NAME.match(p.name)
        if not m or not p.is_file():
            continue
        pid = int(m.group("pid"))
        try:
            age = now - p.stat().st_mtime
        except OSError:
            continue
        if pid != os.getpid() and not _pid_alive(pid) and age >= min_age:
            out.append(p)
    return sorted(out)


def remove_stale_tmp(*folders: str | Path, min_age: float = MIN_AGE_S) -> list[Path]:
    """Remove the temporary files of killed writes in ``folders``; returns those removed.

    Args:
        folders: folders to clean (not recursively).
        min_age: seconds since the last modification before a file counts as stale.

    Returns:
        The removed files.
    """
    removed = []
    for folder in folders:
        for p in stale_tmp_files(folder, min_age):
            try:
                p.unlink()
            except FileNotFoundError:  # another process cleaned it first
                continue
            except OSError:
                continue
            removed.append(p)
    return removed
