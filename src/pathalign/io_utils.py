"""Atomic file writes: write to a temporary name beside the target, then rename."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd


def tmp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def atomic_write_df(df: pd.DataFrame, path: str | Path, index: bool = False, **kw) -> None:
    """Write ``df`` as Parquet (``.parquet``) or TSV (``.tsv``/``.tsv.gz``/``.csv``), atomically."""
    path = Path(path)
    tmp = tmp_path(path)
    name = path.name
    if name.endswith(".parquet"):
        df.to_parquet(tmp, index=index)
    else:
        sep = "," if ".csv" in name else "\t"
        df.to_csv(tmp, sep=sep, index=index, compression="gzip" if name.endswith(".gz") else None, **kw)
    os.replace(tmp, path)


def atomic_write_text(text: str, path: str | Path) -> None:
    path = Path(path)
    tmp = tmp_path(path)
    tmp.write_text(text)
    os.replace(tmp, path)


def atomic_write_json(obj, path: str | Path) -> None:
    atomic_write_text(json.dumps(obj, indent=1, sort_keys=True, default=str), path)
