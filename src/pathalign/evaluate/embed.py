"""``pathalign embed``: embeddings of every available modality of every patient and slide.

``embeddings.h5`` holds one group per modality (``wsi``, ``rna``, …) with ``ids`` (utf-8) and
``embeddings`` [n, d]; the ``wsi`` group also has ``case_ids`` (the patient of each slide). With
a trained model, ``pairs/<a>-<b>/<a>`` and ``.../<b>`` hold the embeddings projected into each
pair's shared space (l2-normalised, so that retrieval needs no model). Per-slide files in the
Trident layout (``slide_features_<model>/<slide_id>.h5`` with ``features`` [d]) are written
for Patho-Bench.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import h5py
import numpy as np
import torch
from tqdm.auto import tqdm

from ..io.atomic import atomic_path
from ..slides.features_io import is_complete, read_patch_features


def _slide_embeddings(encode, slide_ids, features_dir: Path, batch_size: int, progress: bool):
    out, kept = [], []
    bar = tqdm(range(0, len(slide_ids), batch_size), desc="embed slides", disable=not progress, leave=False)
    for start in bar:
        chunk = slide_ids[start:start + batch_size]
        slides = []
        for sid in chunk:
            pf = read_patch_features(features_dir / f"{sid}.h5")
            if pf.features is None or len(pf) == 0:
                continue
            slides.append(tuple(torch.from_numpy(a) for a in pf.as_inputs()))
            kept.append(sid)
        if slides:
            with torch.no_grad():
                out.append(encode(slides).float().cpu().numpy())
    return kept, (np.concatenate(out) if out else np.zeros((0, 0), np.float32))


def _write_group(fh, name, ids, emb, **extra):
    g = fh.create_group(name)
    g.create_dataset("ids", data=np.array(ids, dtype=object), dtype=h5py.string_dtype("utf-8"))
    g.create_dataset("embeddings", data=np.asarray(emb, np.float32))
    for k, v in extra.items():
        g.create_dataset(k, data=np.array(v, dtype=object), dtype=h5py.string_dtype("utf-8"))


def _write_trident(out_dir: Path, ids, emb) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    for sid, e in zip(ids, emb):
        with atomic_path(out_dir / f"{sid}.h5") as tmp, h5py.File(tmp, "w") as fh:
            fh.create_dataset("features", data=e.astype(np.float32))


def embed_with_model(model_path, cohort_path, out_path, features_dir=None, batch_size=16, progress=True,
                     trident_name: str | None = None) -> dict[str, int]:
    """Embed a cohort with a trained model; returns the number of items per modality."""
    from ..cohort import load_cohort
    from ..models.pathalign_model import load_model
    from ..train.data import CohortData

    model = load_model(model_path)
    cohort = load_cohort(cohort_path)
    mods = [m for m in model.modalities if m in cohort.modalities]
    data = CohortData(cohort, features_dir, mods, preprocessing=model.preprocessing)
    counts, embs, ids = {}, {}, {}
    if "wsi" in mods:
        slide_ids, case_of = [], []
        for p, sids in zip(data.ids, data.slides):
            slide_ids += sids
            case_of += [p] * len(sids)
        kept, emb = _slide_embeddings(model.encode_slide, slide_ids, data.features_dir, batch_size, progress)
        case_map = dict(zip(slide_ids, case_of))
        ids["wsi"], embs["wsi"] = kept, emb
        ids["wsi_case"] = [case_map[s] for s in kept]
    for m in mods:
        if m == "wsi":
            continue
        rows = np.flatnonzero(data.valid[m])
        with torch.no_grad():
            embs[m] = model.encode_molecular(m, torch.from_numpy(data.arrays[m][rows])).numpy()
        ids[m] = [data.ids[i] for i in rows]
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_path) as tmp, h5py.File(tmp, "w") as fh:
        fh.attrs["model"] = str(model_path)
        held = (model.extra.get("splits") or {}).get("val")
        if held is not None:
            fh.attrs["heldout_patients"] = json.dumps(held)
        for m in mods:
            extra = {"case_ids": ids["wsi_case"]} if m == "wsi" else {}
            _write_group(fh, m, ids[m], embs[m], **extra)
            counts[m] = len(ids[m])
        pairs = fh.create_group("pairs")
        for a, b in model.pair_heads.pairs:
            if a not in embs or b not in embs:
                continue
            g = pairs.create_group(f"{a}-{b}")
            with torch.no_grad():
                g.create_dataset(a, data=model.pair_heads.project(a, b, torch.from_numpy(embs[a])).numpy())
                g.create_dataset(b, data=model.pair_heads.project(b, a, torch.from_numpy(embs[b])).numpy())
                t, bias = model.pair_heads.temperature_bias(a, b)
            g.attrs["t"], g.attrs["b"] = float(t.detach().exp()), float(bias.detach())
    if "wsi" in embs and trident_name:
        _write_trident(out_path.parent / f"slide_features_{trident_name}", ids["wsi"], embs["wsi"])
    return counts


def embed_with_slide_encoder(name: str, weights, features_dir, out_path, batch_size=16, progress=True) -> dict[str, int]:
    """Embed every features file of ``features_dir`` with a bare slide encoder loaded from published weights."""
    from ..models import SlideEncoder

    if not weights:
        raise ValueError(f"--slide-encoder {name} needs --weights (a random slide encoder gives meaningless embeddings)")
    enc = SlideEncoder.from_exaone_path(weights)
    features_dir = Path(features_dir)
    slide_ids = sorted(p.stem for p in features_dir.glob("*.h5") if is_complete(p))

    def encode(slides):
        return torch.stack([o["slide_embedding"] for o in enc.encode_batch(slides)])

    kept, emb = _slide_embeddings(encode, slide_ids, features_dir, batch_size, progress)
    out_path = Path(out_path)
    with atomic_path(out_path) as tmp, h5py.File(tmp, "w") as fh:
        fh.attrs["model"] = f"{name}:{weights}"
        _write_group(fh, "wsi", kept, emb)
    _write_trident(out_path.parent / f"slide_features_{name}", kept, emb)
    return {"wsi": len(kept)}


def embed_mean_pool(features_dir, out_path, cohort_path=None) -> dict[str, int]:
    """Baseline: the mean of each slide's patch features (``wsi`` group; ``case_ids`` from the cohort when given)."""
    features_dir = Path(features_dir)
    case_of = {}
    if cohort_path is not None:
        from ..cohort import load_cohort

        for p, sids in zip(*load_cohort(cohort_path).manifest[["case_id", "slide_ids"]].to_numpy().T):
            case_of.update({s: p for s in sids})
    ids, embs = [], []
    for path in sorted(features_dir.glob("*.h5")):
        if not is_complete(path):
            continue
        pf = read_patch_features(path)
        if pf.features is None or len(pf) == 0:
            continue
        ids.append(path.stem)
        embs.append(np.asarray(pf.features, np.float32).mean(0))
    if not ids:
        raise ValueError(f"{features_dir}: no complete features file")
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_path) as tmp, h5py.File(tmp, "w") as fh:
        fh.attrs["model"] = f"mean-pool:{features_dir}"
        _write_group(fh, "wsi", ids, np.stack(embs), case_ids=[case_of.get(s, s) for s in ids])
    return {"wsi": len(ids)}


def read_embeddings(path) -> dict[str, dict]:
    """``{modality: {"ids": [...], "embeddings": array, ...}}`` and ``"pairs"`` → ``{"a-b": {a: arr, b: arr}}``."""
    out: dict = {}
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such embeddings file")
    with h5py.File(path, "r") as fh:
        attrs = dict(fh.attrs)
        out["_attrs"] = {"model": attrs.get("model")}
        if "heldout_patients" in attrs:
            out["_attrs"]["heldout_patients"] = json.loads(attrs["heldout_patients"])
        for name, g in fh.items():
            if name == "pairs":
                out["pairs"] = {k: {m: np.asarray(v[m]) for m in v} | {"t": v.attrs.get("t"), "b": v.attrs.get("b")}
                                for k, v in g.items()}
                continue
            out[name] = {k: (np.asarray(g[k]).astype(str).tolist() if g[k].dtype.kind == "O" else np.asarray(g[k]))
                         for k in g}
    return out


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="trained model folder (RUN/model)")
    p.add_argument("--cohort", help="cohort folder")
    p.add_argument("--features", help="patch-features folder (default: the cohort's)")
    p.add_argument("--slide-encoder", help="instead of --model: a bare slide encoder, e.g. exaone-path-2.5")
    p.add_argument("--mean-pool", action="store_true", help="instead of --model: the mean-pooling baseline of --features")
    p.add_argument("--weights", help="weights of --slide-encoder (published checkpoint)")
    p.add_argument("--out", required=True, help="embeddings.h5 to write")
    p.add_argument("--name", default="pathalign", help="model name used for the Trident-style per-slide folder")
    p.add_argument("--batch-size", type=int, default=16, help="slides per packed pass")
    p.add_argument("--quiet", action="store_true")


def run(args) -> int:
    try:
        if args.model:
            if not args.cohort:
                raise ValueError("--model needs --cohort")
            counts = embed_with_model(args.model, args.cohort, args.out, args.features, args.batch_size,
                                      not args.quiet, args.name)
        elif args.mean_pool:
            if not args.features:
                raise ValueError("--mean-pool needs --features DIR")
            counts = embed_mean_pool(args.features, args.out, args.cohort)
        elif args.slide_encoder:
            if not args.features:
                raise ValueError("--slide-encoder needs --features DIR")
            counts = embed_with_slide_encoder(args.slide_encoder, args.weights, args.features, args.out,
                                              args.batch_size, not args.quiet)
        else:
            raise ValueError("give --model (with --cohort) or --slide-encoder (with --features)")
    except (ValueError, FileNotFoundError, KeyError) as e:
        print(f"error: {e}")
        return 1
    print("embedded: " + ", ".join(f"{m} {n}" for m, n in counts.items()) + f" -> {args.out}")
    return 0
