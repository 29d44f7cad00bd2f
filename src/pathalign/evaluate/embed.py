"""``pathalign embed``: embeddings of every available modality of every patient and slide.

The file is written and read by :mod:`pathalign.io.embeddings`.

``embeddings.h5`` holds one group per modality (``wsi``, ``rna``, …) with ``ids`` (utf-8) and
``embeddings`` [n, d]; the ``wsi`` group also has ``case_ids`` (the patient of each slide). With
a trained model, ``pairs/<a>-<b>/<a>`` and ``.../<b>`` hold the embeddings projected into each
pair's shared space (l2-normalised, so that retrieval needs no model). Beside it, Patho-Bench
sample files (``pathobench_<name>/by_slide_id/<slide_id>.h5`` and ``.../by_case_id/<case_id>.h5``,
``features`` [1, d], a patient's slides averaged) are written for every way of embedding
(``--model``, ``--slide-encoder``, ``--mean-pool``). Slides that cannot be embedded (no or an
incomplete features file, zero patches, an unreadable file) are skipped and named.

With a patient-level model (``wsi_level="patient"`` in its config, or ``--wsi-level patient``), a
patient's slides are encoded together as one sequence: the ``wsi`` group keeps one row per slide
(``ids`` the slide ids, ``case_ids`` their patient) and every slide of a patient holds the patient's
embedding, so every reader that looks a slide up or averages a patient's slides (bench, retrieval,
heatmap, the viewer) gets the patient embedding unchanged. The file attribute ``wsi_level`` says which
(absent: ``slide``). Per-slide embeddings of such a model: embed again with ``--wsi-level slide``.
Under ``--max-tokens`` a patient with more patches keeps that many, shared by its slides in
proportion to their patches, drawn with a seed made from the patient id (the same subset on every
run, whatever the batch); the attributes ``patient_token_cap`` and ``capped_patients`` (JSON: patient
→ its patches before the cap) say so. Without it every patch is encoded (memory is linear in them).

A molecular group also has ``imputed_fraction`` [n] (float32): per patient, the fraction of the
model's features the cohort's table lacks for them, filled with the training mean; the file
attribute ``feature_overlap`` (JSON) gives per modality the model's features found in the table.
Fewer than half of them found is refused before any work (:mod:`pathalign.models.feature_names`).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import PathalignError
from ..io.embeddings import write_embeddings, write_slides_file
from ..io.features import FeatureFileError, is_complete, read_patch_features
from ..io.features_contract import check_features_folder, file_encoder
from ..io.pathobench import write_pathobench_files
from ..models.feature_names import FeatureOverlap
from .molecular_inputs import molecular_inputs


class EmbedError(PathalignError, ValueError):
    """Embedding cannot start or produced nothing; the message names the folder, file or option."""


@dataclass
class EmbedSummary:
    """What an ``embed`` call wrote.

    Args:
        counts: items embedded per modality.
        skipped: slide id → why it was not embedded.
        pathobench_dir: the Patho-Bench sample folder written (``by_slide_id``/``by_case_id`` inside).
        warnings: e.g. a partial overlap of the model's features with the cohort's (printed by the CLI).
    """

    counts: dict[str, int]
    skipped: dict[str, str] = field(default_factory=dict)
    pathobench_dir: Path | None = None
    warnings: list[str] = field(default_factory=list)


def _slide_problem(path: Path) -> str | None:
    """Why ``path`` cannot be embedded, or None."""
    if not path.is_file():
        return f"no features file {path}"
    if not is_complete(path):
        return f"incomplete features file {path} (an interrupted extraction?)"
    return None


def _read_slide(path: Path):
    """``(inputs, None)`` of a features file, or ``(None, why it cannot be embedded)``."""
    problem = _slide_problem(path)
    if problem is not None:
        return None, problem
    try:
        pf = read_patch_features(path)
    except FeatureFileError as e:
        return None, str(e)
    if pf.features is None:
        return None, f"{path} has coordinates but no 'features' dataset"
    if len(pf) == 0:
        return None, f"{path} has zero patches"
    return pf.as_inputs(), None


def _slide_embeddings(encode, slide_ids, features_dir: Path, batch_size: int, progress: bool,
                      device: str | torch.device = "cpu"):
    """Embed ``slide_ids`` (inputs moved to ``device``); returns ``(kept ids, [n, d] embeddings, {skipped id: reason})``.

    The folder's coordinate contract is the caller's to check (once, before any slide is read).
    """
    out, kept, skipped = [], [], {}
    bar = tqdm(range(0, len(slide_ids), batch_size), desc="embed slides", disable=not progress, leave=False)
    for start in bar:
        chunk = slide_ids[start:start + batch_size]
        slides, names = [], []
        for sid in chunk:
            arrays, problem = _read_slide(features_dir / f"{sid}.h5")
            if problem is not None:
                skipped[sid] = problem
                continue
            slides.append(tuple(torch.from_numpy(a).to(device) for a in arrays))
            names.append(sid)
        if slides:
            with torch.no_grad():
                out.append(encode(slides, names=names).float().cpu().numpy())
            kept += names
    return kept, (np.concatenate(out) if out else np.zeros((0, 0), np.float32)), skipped


def patient_token_seed(case_id: str) -> int:
    """The seed of a patient's patch subset at inference: a stable hash of its id (no batch or order dependence)."""
    import zlib

    return zlib.crc32(str(case_id).encode())


def _patient_embeddings(encode_patient, patients: Sequence[tuple[str, list[str]]], features_dir: Path,
                        batch_size: int, progress: bool, device: str | torch.device = "cpu",
                        max_tokens: int | None = None):
    """Embed each patient's slides as one sequence.

    Returns:
        ``(kept slide ids, [n, d] embeddings: the patient's for each of its slides, {skipped slide: reason},
        {capped patient: its patches before the cap})``. The folder's coordinate contract is the caller's to check.
    """
    from ..models.packing import draw_patient_rows

    out, kept, skipped, capped = [], [], {}, {}
    pending: list[tuple[list[str], list[tuple]]] = []  # (slide ids, their inputs) per patient

    def flush():
        if not pending:
            return
        with torch.no_grad():
            z = encode_patient([p[1] for p in pending], names=[p[0] for p in pending]).float().cpu().numpy()
        for (sids, _), row in zip(pending, z):
            out.append(np.repeat(row[None], len(sids), 0))
            kept.extend(sids)
        pending.clear()

    bar = tqdm(patients, desc="embed patients", disable=not progress, leave=False)
    for case, sids in bar:
        inputs, names = [], []
        for sid in sids:
            arrays, problem = _read_slide(features_dir / f"{sid}.h5")
            if problem is not None:
                skipped[sid] = problem
                continue
            inputs.append(arrays)
            names.append(sid)
        if not inputs:
            continue
        lengths = [len(a[0]) for a in inputs]
        if max_tokens is not None and sum(lengths) > max_tokens:
            capped[case] = int(sum(lengths))
            rows = draw_patient_rows(lengths, max_tokens, patient_token_seed(case))
            inputs = [a if r is None else tuple(x[r] for x in a) for a, r in zip(inputs, rows)]
        pending.append((names, [tuple(torch.from_numpy(np.ascontiguousarray(x)).to(device) for x in a)
                                for a in inputs]))
        if sum(len(p[0]) for p in pending) >= batch_size:
            flush()
    flush()
    emb = np.concatenate(out) if out else np.zeros((0, 0), np.float32)
    return kept, emb, skipped, capped


def pathobench_dir(out_path: str | Path, name: str) -> Path:
    """The Patho-Bench sample folder written beside ``out_path`` for model ``name``."""
    return Path(out_path).parent / f"pathobench_{name}"


def _case_map(cohort_path) -> dict[str, str]:
    """slide id → case id from a cohort's manifest."""
    from ..cohort import load_cohort

    case_of = {}
    for p, sids in zip(*load_cohort(cohort_path).manifest[["case_id", "slide_ids"]].to_numpy().T):
        case_of.update({s: p for s in sids})
    return case_of


def _check_encoder(model, features_dir: Path, slide_ids: list[str]) -> None:
    """Refuse, before any work, features made by another patch encoder than the model's (first file that says)."""
    for sid in slide_ids:
        path = features_dir / f"{sid}.h5"
        if path.is_file():
            encoder = file_encoder(path)
            if encoder is not None:
                model.check_patch_encoder(encoder, str(path))
                return


def embed_with_model(model_path: str | Path, cohort_path: str | Path, out_path: str | Path,
                     features_dir: str | Path | None = None, batch_size: int = 16, progress: bool = True,
                     name: str | None = None, trident_name: str | None = None,
                     device: str | torch.device = "cpu", wsi_level: str | None = None,
                     max_tokens: int | None = None) -> EmbedSummary:
    """Embed a cohort with a trained model.

    Args:
        model_path: trained model folder.
        cohort_path: cohort folder.
        out_path: embeddings.h5 to write.
        features_dir: patch-features folder (default: the cohort's).
        batch_size: slides per packed pass.
        progress: show a progress bar.
        name: model name of the Patho-Bench folder ``pathobench_<name>`` beside ``out_path`` (None: none written).
        trident_name: deprecated former name of ``name`` (warns).
        device: where the model runs (fp32).
        wsi_level: ``"slide"`` or ``"patient"`` (None: the model's ``wsi_level``); see the module docstring.
        max_tokens: patient level only: patches per patient at most (None: all of them).

    Returns:
        Counts per modality, the slides skipped with their reason, the Patho-Bench folder.
    """
    if trident_name is not None:
        import warnings

        warnings.warn("embed_with_model(trident_name=...) is deprecated: pass name=...", DeprecationWarning, stacklevel=2)
    name = name or trident_name
    from ..cohort import load_cohort
    from ..cohort.model_view import CohortData
    from ..models.pathalign_model import WSI_LEVELS, load_model

    model = load_model(model_path).to(device)
    level = wsi_level or model.config.wsi_level
    if level not in WSI_LEVELS:
        raise EmbedError(f"--wsi-level must be one of {WSI_LEVELS}, got {level!r}")
    if max_tokens is not None and (level != "patient" or max_tokens < 1):
        raise EmbedError("--max-tokens caps the patches of a patient: it needs --wsi-level patient and a value >= 1")
    capped: dict[str, int] = {}
    cohort = load_cohort(cohort_path)
    mods = [m for m in model.modalities if m in cohort.modalities]
    counts, embs, ids, skipped = {}, {}, {}, {}
    inputs = {m: molecular_inputs(model, cohort, m) for m in mods if m != "wsi"}  # refused before any slide work
    warnings = [i.warning for i in inputs.values() if i.warning]
    if "wsi" in mods:
        data = CohortData(cohort, features_dir, ["wsi"], report_slides=False)
        slide_ids, case_of = [], []
        for p, sids in zip(data.ids, data.slides):
            slide_ids += sids
            case_of += [p] * len(sids)
        _check_encoder(model, data.features_dir, slide_ids)  # the folder's contract: checked by CohortData
        model.check_features_scale(data.features_contracts, str(data.features_dir))
        if level == "patient":
            kept, emb, skipped, capped = _patient_embeddings(
                model.encode_patient, list(zip(data.ids, data.slides)), data.features_dir, batch_size, progress,
                device, max_tokens)
        else:
            kept, emb, skipped = _slide_embeddings(model.encode_slide, slide_ids, data.features_dir, batch_size,
                                                   progress, device)
        listed = {s for sids in cohort.manifest.slide_ids for s in sids}
        for s in sorted(listed - set(slide_ids)):
            skipped[s] = (data.slide_problems.get(s) or _slide_problem(data.features_dir / f"{s}.h5")
                          or "not usable")
        case_map = dict(zip(slide_ids, case_of))
        ids["wsi"], embs["wsi"] = kept, emb
        ids["wsi_case"] = [case_map[s] for s in kept]
    for m, inp in inputs.items():
        with torch.no_grad():
            embs[m] = model.encode_molecular(m, torch.from_numpy(inp.x).to(device)).cpu().numpy()
        ids[m] = inp.ids
    out_path = Path(out_path)
    attrs = {"model": str(model_path), "skipped_slides": skipped, "wsi_level": level}
    if max_tokens is not None:
        attrs |= {"patient_token_cap": int(max_tokens), "capped_patients": capped}
    held = ((model.training_info or {}).get("splits") or {}).get("val")
    if held is not None:
        attrs["heldout_patients"] = held
    if inputs:
        attrs["feature_overlap"] = {m: overlap_record(i.overlap) for m, i in inputs.items()}
    groups = {}
    for m in mods:
        groups[m] = {"ids": ids[m], "embeddings": embs[m]} | ({"case_ids": ids["wsi_case"]} if m == "wsi" else {})
        if m in inputs:
            groups[m]["imputed_fraction"] = inputs[m].imputed_fraction.astype(np.float32)
        counts[m] = len(ids[m])
    pairs = {}
    for a, b in model.pair_heads.pairs:
        if a not in embs or b not in embs:
            continue
        with torch.no_grad():
            t, bias = model.pair_heads.temperature_bias(a, b)
            pairs[f"{a}-{b}"] = {
                a: model.pair_heads.project(a, b, torch.from_numpy(embs[a]).to(device)).cpu().numpy(),
                b: model.pair_heads.project(b, a, torch.from_numpy(embs[b]).to(device)).cpu().numpy(),
                "t": float(t.detach().exp()), "b": float(bias.detach())}
    write_embeddings(out_path, groups, pairs, attrs)
    pb = None
    if "wsi" in embs and name:
        pb = pathobench_dir(out_path, name)
        write_pathobench_files(pb, ids["wsi"], ids["wsi_case"], embs["wsi"])
    if capped:
        warnings.append(f"{len(capped)} patients have more than --max-tokens {max_tokens} patches; each was encoded "
                        f"from {max_tokens} of them, shared by its slides in proportion (e.g. "
                        f"{', '.join(f'{c}: {n}' for c, n in list(capped.items())[:3])}); see capped_patients in {out_path}")
    return EmbedSummary(counts, skipped, pb, warnings)


def overlap_record(overlap: FeatureOverlap) -> dict:
    """What ``embeddings.h5`` records of a modality's feature overlap (attribute ``feature_overlap``)."""
    return {"present": overlap.n_present, "features": overlap.n_model, "renamed": overlap.n_renamed,
            "missing_examples": overlap.missing[:10]}


def _features_slides(features_dir: Path) -> tuple[list[str], dict[str, str]]:
    """Slide ids of the complete features files in ``features_dir``, and the incomplete ones with a reason."""
    if not features_dir.is_dir():
        raise EmbedError(f"{features_dir}: no such features folder")
    ids, skipped = [], {}
    for p in sorted(features_dir.glob("*.h5")):
        problem = _slide_problem(p)
        if problem is None:
            ids.append(p.stem)
        else:
            skipped[p.stem] = problem
    return ids, skipped


def _case_ids(ids: list[str], cohort_path) -> tuple[list[str], str]:
    if cohort_path is None:
        return list(ids), "slide_id (no cohort given: one patient per slide)"
    case_of = _case_map(cohort_path)
    return [case_of.get(s, s) for s in ids], "cohort"


def embed_with_slide_encoder(name: str, weights: str | Path, features_dir: str | Path, out_path: str | Path,
                             batch_size: int = 16, progress: bool = True,
                             cohort_path: str | Path | None = None, out_name: str | None = None,
                             device: str | torch.device = "cpu") -> EmbedSummary:
    """Embed every features file of ``features_dir`` with a bare slide encoder loaded from published weights.

    Args:
        name: slide-encoder name (e.g. ``exaone-path-2.5``).
        weights: published checkpoint.
        features_dir: patch-features folder.
        out_path: embeddings.h5 to write (its folder is created).
        batch_size: slides per packed pass.
        progress: show a progress bar.
        cohort_path: cohort whose manifest gives each slide's patient (``case_ids``); without it a slide is its
            own patient, and the file says so (attribute ``case_ids_from``).
        out_name: model name of the Patho-Bench folder (default: ``name``).
        device: where the slide encoder runs (fp32).

    Returns:
        Counts, skipped slides with their reason, the Patho-Bench folder.
    """
    from ..models import SlideEncoder

    if not weights:
        raise EmbedError(f"--slide-encoder {name} needs --weights (a random slide encoder gives meaningless embeddings)")
    features_dir, out_path = Path(features_dir), Path(out_path)
    slide_ids, skipped = _features_slides(features_dir)
    case_ids_all, source = _case_ids(slide_ids, cohort_path)
    enc = SlideEncoder.from_exaone_path(weights).to(device)

    def encode(slides: Sequence[tuple], names: Sequence[str] | None = None) -> torch.Tensor:
        return torch.stack([o["slide_embedding"] for o in enc.encode_batch(slides, names=names)])

    check_features_folder(features_dir, slide_ids)
    kept, emb, more = _slide_embeddings(encode, slide_ids, features_dir, batch_size, progress, device)
    skipped.update(more)
    if not kept:
        raise EmbedError(f"{features_dir}: no slide could be embedded ({len(skipped)} skipped: "
                         f"{dict(list(skipped.items())[:3])})")
    cases = [dict(zip(slide_ids, case_ids_all))[s] for s in kept]
    write_slides_file(out_path, f"{name}:{weights}", kept, emb, cases, skipped, case_ids_from=source)
    pb = pathobench_dir(out_path, out_name or name)
    write_pathobench_files(pb, kept, cases, emb)
    return EmbedSummary({"wsi": len(kept)}, skipped, pb)


def embed_mean_pool(features_dir: str | Path, out_path: str | Path, cohort_path: str | Path | None = None,
                    name: str | None = "mean-pool") -> EmbedSummary:
    """Baseline: the mean of each slide's patch features (``wsi`` group; ``case_ids`` from the cohort when given).

    Args:
        features_dir: patch-features folder.
        out_path: embeddings.h5 to write.
        cohort_path: cohort giving each slide's patient (without it a slide is its own patient).
        name: model name of the Patho-Bench folder (None: none written).

    Returns:
        Counts, skipped slides with their reason, the Patho-Bench folder.
    """
    features_dir, out_path = Path(features_dir), Path(out_path)
    slide_ids, skipped = _features_slides(features_dir)

    def encode(slides: Sequence[tuple], names: Sequence[str] | None = None) -> torch.Tensor:  # names: the slide ids, unused by a mean
        return torch.stack([f.float().mean(0) for f, *_ in slides])

    check_features_folder(features_dir, slide_ids)
    ids, emb, more = _slide_embeddings(encode, slide_ids, features_dir, 64, False)
    skipped.update(more)
    if not ids:
        raise EmbedError(f"{features_dir}: no complete features file with patches "
                         f"({len(skipped)} skipped: {dict(list(skipped.items())[:3])})")
    cases, source = _case_ids(ids, cohort_path)
    write_slides_file(out_path, f"mean-pool:{features_dir}", ids, emb, cases, skipped, case_ids_from=source)
    pb = None
    if name:
        pb = pathobench_dir(out_path, name)
        write_pathobench_files(pb, ids, cases, emb)
    return EmbedSummary({"wsi": len(ids)}, skipped, pb)


