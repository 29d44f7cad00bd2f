"""Atomic file writes: write to a temporary name beside the target, then rename.

A killed process therefore leaves either the previous file or a hidden ``.<name>.<pid>.tmp``
leftover, never a half-written file under the real name.
"""
from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any, Iterator

import pandas as pd


def tmp_path(path: Path, keep_suffix: bool = False) -> Path:
    """The hidden temporary name used while writing ``path`` (``keep_suffix`` for writers that pick a format by it)."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp" + (path.suffix if keep_suffix else ""))


@contextlib.contextmanager
def atomic_path(path: str | Path, keep_suffix: bool = False) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces ``path``, on error it is removed."""
    path = Path(path)
    tmp = tmp_path(path, keep_suffix)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_df(df: pd.DataFrame, path: str | Path, index: bool = False, **kw: Any) -> None:
    """Write ``df`` as Parquet (``.parquet``) or TSV (``.tsv``/``.tsv.gz``/``.csv``), atomically."""
    name = Path(path).name
    with atomic_path(path) as tmp:
        if name.endswith(".parquet"):
            df.to_parquet(tmp, index=index)
        else:
            sep = "," if ".csv" in name else "\t"
            df.to_csv(tmp, sep=sep, index=index, compression="gzip" if name.endswith(".gz") else None, **kw)


def atomic_write_text(text: str, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def atomic_write_json(obj: Any, path: str | Path) -> None:
    atomic_write_text(json.dumps(obj, indent=1, sort_keys=True, default=str), path)
