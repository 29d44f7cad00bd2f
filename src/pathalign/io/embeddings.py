"""``embeddings.h5``: the one reader and writer of the embeddings file, and the per-patient pooling of its rows.

Layout: one group per modality (``wsi``, ``rna``, …) with ``ids`` (utf-8) and ``embeddings`` [n, d];
the ``wsi`` group also has ``case_ids`` (the patient of each slide), a molecular group written from a
model ``imputed_fraction`` [n] (float32). A trained model's file has ``pairs/<a>-<b>/<a>`` and
``.../<b>``: the embeddings projected into each pair's shared space, with the pair's ``t`` and ``b``
as attributes. File attributes: ``model``, ``skipped_slides`` (JSON: slide id → why), and where
known ``heldout_patients`` (JSON list), ``feature_overlap`` (JSON), ``case_ids_from``.

:func:`read_embeddings` returns the same shapes :func:`write_embeddings` takes:
``{modality: {"ids": [...], "embeddings": array, ...}, "pairs": {"a-b": {a: arr, b: arr, "t", "b"}},
"_attrs": {...}}``.
"""
from __future__ import annotations

import json
from collections.abc import Container, Iterable, Mapping, Sequence
from pathlib import Path

import h5py
import numpy as np
import numpy.typing as npt

from ..errors import PathalignError
from .atomic import atomic_path
from .hdf5 import open_hdf5

STRING_DATASETS = ("ids", "case_ids")
JSON_ATTRS = ("skipped_slides", "heldout_patients", "feature_overlap", "capped_patients")


class EmbeddingsFileError(PathalignError, ValueError):
    """An embeddings file that cannot be read; the message names the file."""


def write_group(fh: h5py.File, name: str, ids: Sequence[str], emb: npt.ArrayLike, **extra: Sequence[str]) -> None:
    """One modality group: ``ids`` (utf-8), ``embeddings`` (float32) and ``extra`` string datasets (``case_ids``)."""
    g = fh.create_group(name)
    g.create_dataset("ids", data=np.array(ids, dtype=object), dtype=h5py.string_dtype("utf-8"))
    g.create_dataset("embeddings", data=np.asarray(emb, np.float32))
    for k, v in extra.items():
        g.create_dataset(k, data=np.array(v, dtype=object), dtype=h5py.string_dtype("utf-8"))


def write_embeddings(path: str | Path, groups: Mapping[str, Mapping], pairs: Mapping[str, Mapping] | None = None,
                     attrs: Mapping | None = None) -> None:
    """Write an embeddings file atomically (its folder is created).

    Args:
        path: the ``embeddings.h5`` to write.
        groups: modality → ``{"ids", "embeddings", optional "case_ids", other arrays (``imputed_fraction``)}``.
        pairs: ``"a-b"`` → ``{a: [n, P], b: [n, P], "t": float, "b": float}`` (None: no ``pairs`` group; a
            model's file always has one, empty when no pair has both sides).
        attrs: file attributes; ``skipped_slides``, ``heldout_patients``, ``feature_overlap`` and ``capped_patients``
            are stored as JSON. ``wsi_level`` (``slide`` or ``patient``: whether each slide row holds the slide's
            embedding or its patient's, all slides packed together) is read back as ``slide`` when absent.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as fh:
        for k, v in (attrs or {}).items():
            fh.attrs[k] = json.dumps(v) if k in JSON_ATTRS else v
        for m, g in groups.items():
            write_group(fh, m, g["ids"], g["embeddings"], **{k: g[k] for k in STRING_DATASETS[1:] if k in g})
            for k, v in g.items():
                if k not in STRING_DATASETS and k != "embeddings":
                    fh[m].create_dataset(k, data=np.asarray(v))
        if pairs is not None:
            group = fh.create_group("pairs")
            for key, pair in pairs.items():
                g = group.create_group(key)
                for m, v in pair.items():
                    if m not in ("t", "b"):
                        g.create_dataset(m, data=v)
                g.attrs["t"], g.attrs["b"] = pair["t"], pair["b"]


def write_slides_file(out_path: str | Path, model: str, ids: Sequence[str], emb: npt.ArrayLike,
                      case_ids: Sequence[str], skipped: dict, **attrs: str) -> None:
    """An embeddings file of slides only (a ``wsi`` group with ``case_ids``), as a bare slide encoder writes it."""
    write_embeddings(out_path, {"wsi": {"ids": ids, "embeddings": emb, "case_ids": case_ids}},
                     attrs={"model": model, "skipped_slides": skipped, **attrs})


def read_embeddings(path: str | Path) -> dict[str, dict]:
    """``{modality: {"ids": [...], "embeddings": array, ...}}`` and ``"pairs"`` → ``{"a-b": {a: arr, b: arr}}``."""
    out: dict = {}
    with open_hdf5(path, EmbeddingsFileError, "embeddings file") as fh:
        attrs = dict(fh.attrs)
        out["_attrs"] = {"model": attrs.get("model")}
        for k in JSON_ATTRS:
            if k in attrs:
                out["_attrs"][k] = json.loads(attrs[k])
        out["_attrs"]["wsi_level"] = str(attrs.get("wsi_level", "slide"))  # files from before patient level: slide
        if "patient_token_cap" in attrs:
            out["_attrs"]["patient_token_cap"] = int(attrs["patient_token_cap"])
        for name, g in fh.items():
            if name == "pairs":
                out["pairs"] = {k: {m: np.asarray(v[m]) for m in v} | {"t": v.attrs.get("t"), "b": v.attrs.get("b")}
                                for k, v in g.items()}
                continue
            out[name] = {k: (np.asarray(g[k]).astype(str).tolist() if g[k].dtype.kind == "O" else np.asarray(g[k]))
                         for k in g}
    return out


def patient_ids(embeddings: dict, modality: str) -> list[str]:
    """The patient of each row of ``modality`` in a :func:`read_embeddings` result (a slide's ``case_ids``, else its id)."""
    g = embeddings[modality]
    return g.get("case_ids", g["ids"]) if modality == "wsi" else g["ids"]


def slide_case_id(embeddings: dict, slide_id: str) -> str | None:
    """The patient of ``slide_id`` in a :func:`read_embeddings` result (its ``wsi`` group), or None."""
    wsi = embeddings.get("wsi") or {}
    ids, cases = list(wsi.get("ids", [])), list(wsi.get("case_ids", []))
    return cases[ids.index(slide_id)] if slide_id in ids and cases else None


def group_by_patient(case_ids: Iterable, items: Iterable) -> dict[str, list]:
    """``{patient: [its items]}``, patients (as ``str``) in order of first appearance, items in their order."""
    out: dict[str, list] = {}
    for pid, item in zip(case_ids, items):
        out.setdefault(str(pid), []).append(item)
    return out


def patient_means(case_ids: Iterable, embeddings: Iterable, keep: Container | None = None,
                  dtype: npt.DTypeLike = None) -> dict[str, np.ndarray]:
    """Per-patient mean of embedding rows: a patient's slides averaged.

    Args:
        case_ids: the patient of each row.
        embeddings: the rows ([n, d] or n vectors).
        keep: only patients in it (None: all).
        dtype: the rows are cast to it before averaging (None: as they are, e.g. float32 stays float32).

    Returns:
        ``{patient (str): [d] mean}`` in order of first appearance; a patient appears only with a row.
    """
    rows = group_by_patient(case_ids, embeddings)
    return {p: np.mean(np.asarray(v, dtype=dtype), axis=0) for p, v in rows.items() if keep is None or p in keep}
