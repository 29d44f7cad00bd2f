"""Patho-Bench's pooled-embedding layout: one HDF5 file per sample with ``features`` of shape [1, d].

Patho-Bench reads a folder of ``<sample_id>.h5`` files (``datasets/SlideEmbeddingsDataset.py``:
``features['features'].squeeze(0)``, then asserts one dimension), one folder per unit scored,
``<pooled dir>/by_slide_id`` and ``<pooled dir>/by_case_id`` (``scripts/sweep_single_task.py``
appends ``by_{sample_col}``). A patient's vector is the mean of its slides' vectors, as its
``Pooler.pool`` does when slides are pooled one by one (``combine_slides_per_patient=False``).
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import h5py
import numpy as np

from .atomic import atomic_path
from .embeddings import patient_means


def _write_folder(folder: Path, items: dict[str, np.ndarray]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for sid, vec in items.items():
        with atomic_path(folder / f"{sid}.h5") as tmp, h5py.File(tmp, "w") as fh:
            fh.create_dataset("features", data=np.asarray(vec, np.float32).reshape(1, -1))  # [d] -> [1, d]


def write_pathobench_files(root: str | Path, slide_ids: list[str], case_ids: list[str] | None,
                           embeddings: np.ndarray) -> dict[str, int]:
    """Write ``root/by_slide_id/<slide_id>.h5`` and ``root/by_case_id/<case_id>.h5`` (slides of a case averaged).

    The folder is built beside ``root`` and swapped in at the end, so a rerun leaves no stale sample
    from an earlier run and a killed run leaves the previous folder.

    Args:
        root: the model's pooled-embeddings folder (give it to Patho-Bench as ``pooled_embeddings_dir`` with
            ``by_slide_id`` or ``by_case_id`` appended).
        slide_ids: one id per row of ``embeddings``.
        case_ids: the patient of each slide; without them no ``by_case_id`` folder is written.
        embeddings: [n, d] slide embeddings.

    Returns:
        ``{"slides": n_slides, "cases": n_cases}``.
    """
    root = Path(root)
    emb = np.asarray(embeddings, np.float32)
    if len(slide_ids) != len(emb) or (case_ids is not None and len(case_ids) != len(emb)):
        raise ValueError(f"{root}: {len(slide_ids)} slide ids, {len(case_ids or [])} case ids, {len(emb)} embeddings")
    tmp = root.with_name(f".{root.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _write_folder(tmp / "by_slide_id", dict(zip(slide_ids, emb)))
        cases: dict[str, np.ndarray] = {}
        if case_ids is not None:
            cases = patient_means(case_ids, emb)
            _write_folder(tmp / "by_case_id", cases)
        old = root.with_name(f".{root.name}.{os.getpid()}.old")
        if root.exists():
            os.replace(root, old)
        os.replace(tmp, root)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"slides": len(slide_ids), "cases": len(cases)}
