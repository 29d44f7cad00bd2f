"""The cohort folder: written complete or absent, read back as a :class:`Cohort`.

Its files (``manifest.parquet``, ``<modality>.h5``, ``cohort.json``, ``report.md``) are described in
:mod:`pathalign.cohort.build`, which builds it through the writers here.

``cohort build`` writes every file into a hidden sibling folder (``.<name>.building-<pid>``),
then swaps it in place of the target with two renames (the old folder, if any, is moved
aside first and removed after). A kill at any moment therefore leaves either the previous
complete cohort, the new complete cohort, or no folder under the target name — never a mix.

Every build gets a random build id. ``cohort.json`` records it with the list of its data
files, the manifest (Parquet) carries it in its schema metadata and every molecular matrix
(``<modality>.h5``, :mod:`pathalign.io.matrix_store`) in its attributes; :func:`check_complete`
(called by ``load_cohort``) refuses a folder without ``cohort.json``, with a file missing,
with a file from another build, or of an older format version (format 1 stored the matrices
as Parquet, which a wide matrix cannot be read back from in bounded memory: rebuild it).
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import PathalignError
from ..modalities import MODALITIES, MOLECULAR
from .matrix_store import MatrixStore, MatrixStoreError, matrix_attrs, write_matrix

BUILD_KEY = b"pathalign_cohort_build_id"
FORMAT_VERSION = 2  # 1: molecular matrices as Parquet; 2: as float32 HDF5 matrices (matrix_store)
REBUILD = "rebuild the cohort with pathalign cohort build"
META = "cohort.json"  # format_version, build_id, files (the data files of the build), then the builder's facts


class CohortInputError(PathalignError, ValueError):
    """Bad cohort input or cohort folder; the message names the file, row or column.

    Defined with the folder format (the lowest layer that raises it); :mod:`pathalign.cohort` re-exports it.
    """


def new_build_id() -> str:
    """A fresh random build id."""
    return uuid.uuid4().hex


def write_parquet(df: pd.DataFrame, path: Path, build_id: str, index: bool = False) -> None:
    """Write ``df`` as Parquet with ``build_id`` in its schema metadata."""
    table = pa.Table.from_pandas(df, preserve_index=index)
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), BUILD_KEY: build_id.encode()})
    pq.write_table(table, path)


def write_matrix_frame(df: pd.DataFrame, path: Path, build_id: str) -> None:
    """Write a patients x features frame as a float32 matrix file (``matrix_store``) with ``build_id``, atomically."""
    values = df.to_numpy()  # a view for a one-dtype frame: converted to float32 a column block at a time
    write_matrix(path, values, list(map(str, df.index)), list(map(str, df.columns)), {BUILD_KEY.decode(): build_id})


def parquet_build_id(path: Path) -> str | None:
    """The build id stored in a Parquet file written by :func:`write_parquet` (None if it has none)."""
    try:
        meta = pq.read_schema(path).metadata or {}
    except (OSError, pa.ArrowInvalid) as e:
        raise CohortInputError(f"{path}: unreadable Parquet file ({e}); rebuild the cohort") from None
    value = meta.get(BUILD_KEY)
    return value.decode() if value is not None else None


def matrix_build_id(path: Path) -> str | None:
    """The build id stored in a matrix file written by ``write_matrix`` (None if it has none)."""
    try:
        value = matrix_attrs(path).get(BUILD_KEY.decode())
    except MatrixStoreError as e:
        raise CohortInputError(f"{e}; {REBUILD}") from None
    return str(value) if value is not None else None


def _build_id(path: Path) -> str | None:
    return matrix_build_id(path) if path.suffix == ".h5" else parquet_build_id(path)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _leftovers(out: Path) -> list[Path]:
    pattern = re.compile(rf"^\.{re.escape(out.name)}\.(building|old)-(\d+)$")
    if not out.parent.is_dir():
        return []
    return [p for p in out.parent.iterdir() if pattern.match(p.name)]


def _check_replaceable(out: Path) -> None:
    if not out.exists():
        return
    if not out.is_dir():
        raise CohortInputError(f"{out}: exists and is not a folder; choose another --out")
    if any(out.iterdir()) and not ((out / META).is_file() or (out / "manifest.parquet").is_file()):
        raise CohortInputError(f"{out}: exists, is not empty and is not a cohort folder; refusing to replace it "
                               "(choose another --out)")


@contextlib.contextmanager
def staged_folder(out: str | Path) -> Iterator[Path]:
    """Yield an empty hidden sibling of ``out`` to write into; on success it replaces ``out``.

    On error the staging folder is removed and ``out`` is left as it was. Leftovers of killed
    builds (their process gone) are removed first.

    Raises:
        CohortInputError: ``out`` is a non-cohort folder, or its parent cannot be written.
    """
    out = Path(out).absolute()
    _check_replaceable(out)
    for p in _leftovers(out):
        if not _pid_alive(int(p.name.rsplit("-", 1)[1])):
            shutil.rmtree(p, ignore_errors=True)
    stage = out.parent / f".{out.name}.building-{os.getpid()}"
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(stage, ignore_errors=True)
        stage.mkdir()
    except OSError as e:
        raise CohortInputError(f"{out}: cannot write the cohort here ({e.strerror or e})") from None
    try:
        yield stage
        if out.exists():
            os.rename(out, old)
        try:
            os.rename(stage, out)
        except BaseException:
            if old.exists() and not out.exists():
                os.rename(old, out)
            raise
        shutil.rmtree(old, ignore_errors=True)
    except OSError as e:
        shutil.rmtree(stage, ignore_errors=True)
        raise CohortInputError(f"{out}: cannot write the cohort ({e})") from None
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise


def write_meta(folder: Path, build_id: str, files: list[str], **facts: Any) -> Path:
    """Write ``<folder>/cohort.json``: this format version, ``build_id``, the data ``files`` and the builder's ``facts``.

    ``folder`` is the staging folder of :func:`staged_folder`, so the file appears with the rest of the build.
    """
    meta = {**facts, "format_version": FORMAT_VERSION, "build_id": build_id, "files": list(files)}
    path = Path(folder) / META
    path.write_text(json.dumps(meta, indent=1, sort_keys=True, default=str))
    return path


def check_complete(path: Path) -> dict:
    """Check that ``path`` is one complete cohort build; return its ``cohort.json``.

    Raises:
        CohortInputError: no folder, no or unreadable ``cohort.json``, a listed file missing,
            or a data file from another build (the message says which and what to do).
    """
    rebuild = "rebuild it with 'pathalign cohort build'"
    if not path.is_dir():
        hint = ""
        left = _leftovers(path.absolute())
        if left:
            hint = f" (an interrupted build left {', '.join(p.name for p in left)} beside it)"
        raise CohortInputError(f"{path}: no such cohort folder{hint}; {rebuild}")
    meta_path = path / META
    if not meta_path.is_file():
        raise CohortInputError(f"{path}: not a complete cohort folder (no cohort.json with a build id; written by an "
                               f"interrupted build or an older pathalign); {rebuild}")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError) as e:
        raise CohortInputError(f"{meta_path}: unreadable ({e}); {rebuild}") from None
    build_id = meta.get("build_id") if isinstance(meta, dict) else None
    if not build_id or not isinstance(meta.get("files"), list):
        raise CohortInputError(f"{meta_path}: no build id or file list (an older pathalign wrote it); {rebuild}")
    version = meta.get("format_version", 1)
    if not isinstance(version, int) or version < FORMAT_VERSION:
        raise CohortInputError(f"{path}: cohort format version {version} (molecular matrices as Parquet, written by "
                               f"an older pathalign) is no longer read; {REBUILD}")
    if version > FORMAT_VERSION:
        raise CohortInputError(f"{path}: cohort format version {version} is newer than this pathalign reads "
                               f"({FORMAT_VERSION}); upgrade pathalign")
    listed = set(meta["files"])
    for name in sorted(listed | {p.name for p in [*path.glob("*.parquet"), *path.glob("*.h5")]}):
        file = path / name
        if not file.is_file():
            raise CohortInputError(f"{path}: {name} is listed in cohort.json but missing; {rebuild}")
        got = _build_id(file)
        if name not in listed or got != build_id:
            raise CohortInputError(f"{file}: from another build (build id {got} vs {build_id} in cohort.json); "
                                   f"the folder is mixed; {rebuild}")
    return meta


class Cohort:
    """A built cohort folder: ``.manifest``, ``.matrix(modality)`` and ``.store(modality)``."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.meta = check_complete(self.path)
        self.manifest = pd.read_parquet(self.path / "manifest.parquet")
        self.manifest["slide_ids"] = self.manifest["slide_ids"].apply(lambda v: [str(s) for s in v])
        self._cache: dict[str, pd.DataFrame] = {}

    @property
    def modalities(self) -> list[str]:
        """Modalities at least one patient has."""
        return [m for m in MODALITIES if f"has_{m}" in self.manifest and self.manifest[f"has_{m}"].any()]

    def store(self, modality: str) -> MatrixStore:
        """The matrix file of ``modality`` opened for reading in parts (close it, or use it in ``with``)."""
        if modality not in MOLECULAR:
            raise KeyError(f"unknown molecular modality {modality!r}; one of {MOLECULAR}")
        if f"{modality}.h5" not in self.meta["files"]:
            raise KeyError(f"{self.path}: the cohort has no {modality} data")
        return MatrixStore(self.path / f"{modality}.h5")

    def features(self, modality: str) -> list[str]:
        """The feature names of ``modality``'s matrix (its columns), without reading its values."""
        with self.store(modality) as store:
            return list(store.features)

    def matrix(self, modality: str) -> pd.DataFrame:
        """Patients x features raw aligned values (float32) of ``modality`` (rna, snp, cnv, methylation),
        all of it in memory (cached); :meth:`store` reads parts of a wide one."""
        if modality not in self._cache:
            with self.store(modality) as store:
                self._cache[modality] = store.frame()
        return self._cache[modality]

    def __len__(self) -> int:
        return len(self.manifest)

    def __repr__(self) -> str:
        counts = ", ".join(f"{m}={int(self.manifest[f'has_{m}'].sum())}" for m in MODALITIES if f"has_{m}" in self.manifest)
        return f"Cohort({self.path}, {len(self)} patients: {counts})"


def load_cohort(path: str | Path) -> Cohort:
    """Open a cohort folder written by ``pathalign cohort build``.

    Raises:
        CohortInputError: the folder is absent, incomplete or mixed from two builds (see the module docstring).
    """
    return Cohort(path)
