"""``pathalign bench``: linear probes, survival, slide retrieval and cross-modal retrieval of one or
more embedding sets on Patho-Bench split folders or tasks derived from a cohort.

Outputs in ``--out``: ``results.json`` (the recipe, every metric as mean, std and SE over folds,
the number of samples per task and fold with what was dropped and why, skipped tasks with their
reason), ``results.md`` (one table, tasks x models, mean ± SE, then details) and plots.

Patient-level tasks (``sample_col: case_id``) are scored per patient, a patient's embedding being
the mean of its slides' embeddings (Patho-Bench's late fusion). A split that names samples the
embeddings lack is an error unless ``--allow-missing``; ``--recipe patho-bench`` reproduces
Patho-Bench's linear probe and Cox settings (see :mod:`pathalign.evaluate.probes`).

Every modality: besides the slides, each task is scored per patient on each molecular embedding
and on the fused multimodal representation (:mod:`.representations`), with or without slides in
the cohort (``--modality`` chooses); with ``--cohort`` the raw and PCA features of each molecular
modality and a CCA beside every cross-modal pair are scored in the same run (:mod:`.baselines`;
``--no-baselines`` leaves them out). Split ids are matched after the cohort's id normalisation;
survival rows with negative or missing times are left out and named, and patients whose slides lie
on both sides of a fold are warned about (:mod:`.tasks`).
"""
from __future__ import annotations

import itertools
from collections.abc import Callable, Collection, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ..io.cohort_folder import Cohort
from ..cohort.ids import IdRule
from ..io.atomic import atomic_write_json, atomic_write_text
from ..io.embeddings import group_by_patient, patient_ids, read_embeddings
from .probes import Recipe, cox_probe, linear_probe, pathobench_cox_probe, pathobench_linear_probe
from .baselines import PCA_COMPONENTS
from .representations import Representation, choose_modalities, model_representations
from .retrieval import (cross_modal_retrieval, label_hits, label_retrieval, patient_pair_space, recall_at_k,
                        retrieval_scores)
from .tasks import Task, TaskError, match_ids, patient_table
from .bench_report import AGGREGATION, render_markdown


class MissingEmbeddingError(TaskError):
    """A split names samples (or slides) that the embeddings file does not have."""


def _where(task: Task) -> str:
    return f"task {task.name}" + (f" ({task.source})" if task.source else "")


def _slide_lookup(emb: dict) -> tuple[dict[str, np.ndarray], dict[str, list[str]]]:
    """slide_id → embedding, and case_id → its slide ids (from the embeddings' ``case_ids``)."""
    g = emb["wsi"]
    return dict(zip(g["ids"], g["embeddings"])), group_by_patient(patient_ids(emb, "wsi"), g["ids"])


def sample_table(task: Task, emb: dict, allow_missing: bool = False,
                 normalise: Callable[[object], str] | None = None) -> tuple[pd.DataFrame, np.ndarray, dict]:
    """One row per sample (``task.id_column``) with its label and folds, its embedding, and the counts.

    A case's embedding is the mean of its slides' embeddings (Patho-Bench's late fusion,
    ``Pooler.pool``): the slides the split lists for it when the split has a ``slide_id`` column,
    else the slides the embeddings file assigns to it. Rows without a label are dropped and counted.
    Samples (or listed slides) without an embedding are an error naming them, unless ``allow_missing``:
    then they are dropped and counted. Split ids are matched to the embeddings' ids as written or, failing
    that, after the cohort's id normalisation (:func:`pathalign.evaluate.tasks.match_ids`).

    Args:
        task: the task.
        emb: what :func:`read_embeddings` returns (needs a ``wsi`` group).
        allow_missing: drop samples without an embedding instead of raising.
        normalise: the id normalisation (default: the TCGA rule's, :meth:`IdRule.normalise_case`).

    Returns:
        ``(table [n samples], embeddings [n, d], counts)``.

    Raises:
        TaskError: inconsistent labels/folds within a sample, or missing embeddings without ``allow_missing``.
    """
    sc = task.id_column
    normalise = normalise or IdRule("tcga").normalise_case
    slides, cases = _slide_lookup(emb)
    t = task.table.copy()
    if "slide_id" in t.columns:
        t["slide_id"] = match_ids(t["slide_id"], slides, normalise)
    if "case_id" in t.columns:
        t["case_id"] = match_ids(t["case_id"], cases, normalise)
    t[sc] = t[sc].astype(str)
    labelled = t[task.label_columns].notna().all(axis=1)
    counts: dict = {"sample_col": sc, "rows": int(len(t)), "rows_without_label": int((~labelled).sum())}
    t = t[labelled]
    keep = [c for c in (task.label_columns + task.folds) if c in t.columns]
    per_sample = t.groupby(sc, sort=False)[keep].nunique(dropna=False)
    bad = per_sample[(per_sample > 1).any(axis=1)]
    if len(bad):
        cols = sorted({c for c in keep if (bad[c] > 1).any()})
        raise TaskError(f"{_where(task)}: {sc} {bad.index[0]!r} (and {len(bad) - 1} more) has several values in "
                        f"{cols}; every row of one {sc} must agree")
    samples = t.drop_duplicates(sc).reset_index(drop=True)
    vecs, missing_samples, missing_slides = [], [], []
    if sc == "slide_id":
        for s in samples[sc]:
            if s in slides:
                vecs.append(slides[s])
            else:
                vecs.append(None)
                missing_samples.append(s)
    else:
        listed = (t.assign(slide_id=t["slide_id"].astype(str)).groupby(sc, sort=False)["slide_id"].agg(list).to_dict()
                  if "slide_id" in t.columns else {c: cases.get(c, []) for c in samples[sc]})
        for c in samples[sc]:
            have = [slides[s] for s in dict.fromkeys(listed.get(c, [])) if s in slides]
            missing_slides += [s for s in dict.fromkeys(listed.get(c, [])) if s not in slides]
            vecs.append(np.mean(have, axis=0) if have else None)
            if not have:
                missing_samples.append(c)
    counts["samples"] = int(len(samples))
    counts["samples_without_embedding"] = len(missing_samples)
    if "slide_id" in t.columns and sc == "case_id":
        counts["slides_without_embedding"] = len(missing_slides)
    if (missing_samples or missing_slides) and not allow_missing:
        what = (f"{len(missing_samples)} of {len(samples)} {sc}s" if missing_samples else "") + \
               (" and " if missing_samples and missing_slides else "") + \
               (f"{len(missing_slides)} listed slides" if missing_slides else "")
        example = (missing_samples or missing_slides)[:3]
        raise MissingEmbeddingError(f"{_where(task)}: {what} have no embedding (e.g. {example}); "
                                    f"pass --allow-missing (allow_missing=True) to drop them")
    ok = np.array([v is not None for v in vecs], bool)
    samples = samples[ok].reset_index(drop=True)
    x = np.stack([v for v in vecs if v is not None]) if ok.any() else np.zeros((0, 0), np.float32)
    counts["samples_used"] = int(len(samples))
    return samples, x, counts


def labels_of(t: pd.DataFrame, task: Task) -> np.ndarray:
    """The label column as numbers when it is numeric (so that class order, and quadratic kappa, follow the
    numeric order, as Patho-Bench's integer labels do), else as strings."""
    col = t[task.label]
    return col.to_numpy() if pd.api.types.is_numeric_dtype(col) else col.astype(str).to_numpy()


def _fold_metrics(task: Task, t: pd.DataFrame, x: np.ndarray, parts: dict, recipe: Recipe, seed: int) -> dict:
    """Metrics of one fold (keys starting with ``_`` are bookkeeping, not metrics); ``x`` [n samples, d]."""
    tr, va, te = parts["train"], parts["val"], parts["test"]
    if task.task_type == "classification":
        y = labels_of(t, task)
        if len(np.unique(y[tr])) < 2:
            raise ValueError(f"one class ({y[tr][0] if len(tr) else 'none'}) in train")
        if recipe.name == "patho-bench":
            return pathobench_linear_probe(x[tr], y[tr], x[te], y[te], task.ordinal, recipe.cost, recipe.balanced)
        return linear_probe(x[tr], y[tr], x[va], y[va], x[te], y[te], task.ordinal, seed)
    tt, ee = t[task.time_col].to_numpy(float), t[task.event_col].to_numpy(float).astype(int)
    if recipe.name == "patho-bench":
        return pathobench_cox_probe(x[tr], tt[tr], ee[tr], x[te], tt[te], ee[te], recipe.alpha, recipe.l1_ratio)
    return cox_probe(x[tr], tt[tr], ee[tr], x[va], tt[va], ee[va], x[te], tt[te], ee[te], recipe.l1_ratio)


def summarise(values: dict[str, float | None]) -> dict:
    """Mean, population std and SE over folds, as Patho-Bench's ``get_mean_se`` (BaseExperiment.py): folds whose
    metric could not be computed (None) are left out of mean and std, but SE divides by the square root of
    all folds run. ``values`` maps fold → value; they are kept under ``per_fold``."""
    v = [float(a) for a in values.values() if a is not None]
    std = float(np.std(v)) if v else float("nan")
    return {"mean": float(np.mean(v)) if v else float("nan"), "std": std,
            "se": std / float(np.sqrt(len(values))) if v else float("nan"), "n_folds": len(v),
            "per_fold": {f: (None if a is None else float(a)) for f, a in values.items()}}


def _run_folds(task: Task, t: pd.DataFrame, fold_x: Callable[[dict], np.ndarray], recipe: Recipe, seed: int,
               counts: dict, base: dict, fold_retrieval: bool = False
               ) -> tuple[dict, pd.DataFrame | None, list[np.ndarray]]:
    """Every fold of ``task`` on the samples ``t``, features ``fold_x(parts)`` [n samples, d] fitted on the
    fold's training part; ``(result, predictions, per-fold label-retrieval hits of the test queries)`` (hits
    only with ``fold_retrieval``)."""
    per_fold: dict[str, dict] = {}
    skipped_folds, preds, tuned, fold_n, hits = [], [], {}, {}, []
    run_folds = []
    labels = t[task.label].astype(str).to_numpy() if task.task_type == "classification" else None
    groups = (t["case_id"] if "case_id" in t.columns else t[task.id_column]).astype(str).to_numpy()
    for f in task.folds:
        parts = {r: np.flatnonzero(t[f].to_numpy() == r) for r in ("train", "val", "test")}
        fold_n[f] = {r: int(len(v)) for r, v in parts.items()}
        if len(parts["test"]) == 0:
            skipped_folds.append(f"{f}: no test samples")
            continue
        try:
            x = fold_x(parts)
            m = _fold_metrics(task, t, x, parts, recipe, seed)
        except ValueError as e:
            skipped_folds.append(f"{f}: {e}")
            continue
        run_folds.append(f)
        if fold_retrieval and labels is not None and len(t) > 1:
            hits.append(label_hits(x, labels, groups, parts["test"]))
        if "_tuned" in m:
            tuned[f] = m.pop("_tuned")
        if "_pred" in m:
            case = t["case_id"] if "case_id" in t.columns else t[task.id_column]
            preds.append(pd.DataFrame({"case_id": case.iloc[parts["test"]].astype(str).to_numpy(), "fold": f,
                                       "y": labels_of(t, task)[parts["test"]],
                                       "pred": m.pop("_pred")}))
        for k, v in m.items():
            per_fold.setdefault(k, {})[f] = v
    counts["folds"] = fold_n
    if not per_fold:
        reason = "; ".join(skipped_folds) or "no fold could be run"
        if task.task_type == "classification" and t[task.label].nunique() < 2:
            reason = f"label column {task.label!r} has one class ({t[task.label].iloc[0]!r})"
        return {"skipped": reason, **base}, None, []
    out = {k: summarise({f: v.get(f) for f in run_folds}) for k, v in per_fold.items()}
    out.update(base)
    if tuned:
        out["tuning"] = tuned
    if skipped_folds:
        out["skipped_folds"] = skipped_folds
    return out, (pd.concat(preds) if preds else None), hits


def run_task(task: Task, emb: dict, seed: int = 0, recipe: Recipe | None = None,
             allow_missing: bool = False, normalise: Callable[[object], str] | None = None
             ) -> tuple[dict, pd.DataFrame | None]:
    """Metrics of ``task`` on the slide embeddings in ``emb`` and per-item test predictions.

    Args:
        task: the task.
        emb: what :func:`read_embeddings` returns.
        seed: seed of the default recipe's probes.
        recipe: probe recipe (default: the ``pathalign`` one).
        allow_missing: drop samples without an embedding (counted) instead of raising.
        normalise: id normalisation of the split's ids (default: the TCGA rule's).

    Returns:
        ``(result, predictions)``: result has every metric as ``{mean, std, se, n_folds}``, ``n`` (counts: rows,
        rows without label, samples, samples without embedding, and per fold the train/val/test sizes),
        ``recipe`` and ``sample_col``; or ``{"skipped": reason, ...}`` when the task cannot run.

    Raises:
        TaskError: the split names samples without an embedding and ``allow_missing`` is false.
    """
    recipe = recipe or Recipe()
    if task.error:
        return {"skipped": task.error}, None
    if "wsi" not in emb:
        return {"skipped": "the embeddings have no wsi group"}, None
    try:
        t, x, counts = sample_table(task, emb, allow_missing, normalise)
    except MissingEmbeddingError:
        raise
    except TaskError as e:
        return {"skipped": str(e)}, None
    base = {"n": counts, "sample_col": counts["sample_col"], "recipe": recipe.name}
    if t.empty:
        return {"skipped": f"no {task.id_column} of the task has an embedding (task ids e.g. "
                           f"{task.table[task.id_column].astype(str).head(3).tolist()})", **base}, None
    out, preds, _ = _run_folds(task, t, lambda parts: x, recipe, seed, counts, base)
    if "skipped" not in out and task.task_type == "classification":
        groups = (t["case_id"] if "case_id" in t.columns else t[task.id_column]).astype(str).to_numpy()
        out["retrieval"] = label_retrieval(x, t[task.label].astype(str).to_numpy(), groups)
    return out, preds


def run_patient_task(task: Task, rep: Representation, seed: int = 0, recipe: Recipe | None = None,
                     normalise: Callable[[object], str] | None = None) -> tuple[dict, pd.DataFrame | None]:
    """Metrics of ``task`` scored per patient on ``rep`` (a modality's embedding, the fused one, a baseline).

    The task's rows are collapsed to one per patient (:func:`pathalign.evaluate.tasks.patient_table`); patients
    without the representation are left out and counted (a patient need not have every modality). In each
    fold the features are made with the training part's statistics only. Retrieval by label: each fold's test
    patients query every patient of the task (their own excluded), pooled over folds; where every patient is
    tested once this is the all-against-all figure of a fixed embedding.

    Args:
        task: the task.
        rep: the representation.
        seed: probe seed.
        recipe: probe recipe.
        normalise: id normalisation of the split's case ids (default: the TCGA rule's).

    Returns:
        ``(result, predictions)`` as :func:`run_task`, with ``sample_col`` ``case_id`` and ``representation``.
    """
    recipe = recipe or Recipe()
    if task.error:
        return {"skipped": task.error}, None
    try:
        t = patient_table(task)
    except TaskError as e:
        return {"skipped": str(e)}, None
    normalise = normalise or IdRule("tcga").normalise_case
    t["case_id"] = match_ids(t["case_id"], rep.patients, normalise)
    labelled = t[task.label_columns].notna().all(axis=1)
    have = t.case_id.isin(set(rep.patients))
    counts = {"sample_col": "case_id", "rows": int(len(task.table if task.patients is None else task.patients)), "rows_without_label": int((~labelled).sum()),
              "samples": int(labelled.sum()), "samples_without_embedding": int((labelled & ~have).sum())}
    t = t[labelled & have].reset_index(drop=True)
    counts["samples_used"] = int(len(t))
    base = {"n": counts, "sample_col": "case_id", "recipe": recipe.name, "representation": rep.note}
    if t.empty:
        return {"skipped": f"no patient of the task has {rep.name}", **base}, None
    ids = t.case_id.tolist()

    def fold_x(parts: dict) -> np.ndarray:
        return np.asarray(rep.featurize(ids, [ids[i] for i in parts["train"]]), np.float64)

    out, preds, hits = _run_folds(task, t, fold_x, recipe, seed, counts, base, fold_retrieval=True)
    if hits:
        out["retrieval"] = retrieval_scores(np.concatenate(hits))
    return out, preds


def check_embeddings_cover(tasks: list[Task], models: dict[str, dict],
                           normalise: Callable[[object], str] | None = None) -> None:
    """Raise one :class:`TaskError` listing every (model, task) whose split names samples without an embedding
    (split ids matched by ``normalise``, as :func:`sample_table` does)."""
    problems = []
    for name, emb in models.items():
        if "wsi" not in emb:
            continue
        for task in tasks:
            if task.error:
                continue
            try:
                sample_table(task, emb, allow_missing=False, normalise=normalise)
            except MissingEmbeddingError as e:
                problems.append(f"{name} / {task.name}: {e}")
            except TaskError:
                pass  # reported per task by run_task
    if problems:
        raise TaskError("the splits name samples without an embedding (pass --allow-missing to drop and count "
                        "them): " + " | ".join(problems))


def cross_modal(emb: dict, patients: Collection[str] | None = None) -> dict:
    """Recall@1/5/10 (and chance) for every pair in the embeddings, on ``patients`` when given."""
    out = {}
    for key in sorted(emb.get("pairs", {})):
        a, b = key.split("-")
        try:
            out[key] = cross_modal_retrieval(emb, a, b, patients)
        except ValueError as e:
            out[key] = {"skipped": str(e)}
    return out


def by_modality_subset(emb: dict, manifest: pd.DataFrame, preds: dict[str, pd.DataFrame],
                       patients: Collection[str] | None, min_n: int = 8) -> list[dict]:
    """Robustness to missing modalities: per availability pattern, probe accuracy and cross-modal recall@5."""
    mods = [m for m in ("wsi", "rna", "snp", "cnv", "methylation") if f"has_{m}" in manifest]
    man = manifest.set_index("case_id")
    pattern = man[[f"has_{m}" for m in mods]].apply(lambda r: "+".join(m for m in mods if r[f"has_{m}"]), axis=1)
    rows = []
    for pat, members in pattern.groupby(pattern):
        ids = set(members.index) & set(patients if patients is not None else members.index)
        if len(ids) < min_n:
            continue
        row = {"modalities": pat, "patients": len(ids)}
        for task, df in preds.items():
            sub = df[df.case_id.isin(ids)]
            if len(sub) >= min_n:
                from sklearn.metrics import balanced_accuracy_score

                row[f"{task} bal.acc"] = float(balanced_accuracy_score(sub.y, sub.pred))
        present = pat.split("+")
        for a, b in itertools.combinations(present, 2):
            key = f"{a}-{b}" if f"{a}-{b}" in emb.get("pairs", {}) else f"{b}-{a}"
            if key in emb.get("pairs", {}):
                try:
                    pids, xa, xb = patient_pair_space(emb, *key.split("-"), patients=ids)
                    if len(pids) >= min_n:
                        row[f"{key} R@5"] = recall_at_k(xa @ xb.T, (5,))["recall@5"]
                        row[f"{key} chance"] = min(1.0, 5 / len(pids))
                except (KeyError, ValueError):
                    pass
        rows.append(row)
    return rows


def run_bench(models: dict[str, str | Path], tasks: list[Task], out: str | Path, manifest: pd.DataFrame | None = None,
              seed: int = 0, plots: bool = True, progress: bool = True, recipe: Recipe | None = None,
              allow_missing: bool = False, missing_rates: list[float] | None = None,
              missing_seeds: list[int] | None = None, cohort: Cohort | None = None, modalities: Sequence[str] | None = None,
              baselines: bool = True, pca_components: int = PCA_COMPONENTS, cca_components: int | None = None) -> dict:
    """Benchmark every embeddings file of ``models`` on ``tasks``; writes ``results.json`` and ``results.md``.

    Every task is scored on every representation: the slide embeddings per ``sample_col`` (as before, under
    ``models/<name>/tasks``), and per patient each molecular modality's embedding and the fused multimodal one
    (:mod:`.representations`), under ``representations/<name>:<modality>``. With a cohort and ``baselines``,
    the raw and PCA features of each molecular modality are scored on the same tasks and folds
    (``representations/raw:<m>``, ``pca:<m>``) and a CCA beside every cross-modal pair the model scores
    (``models/<name>/cross_modal_baselines/cca:<a>-<b>``), see :mod:`.baselines`.

    Args:
        models: name → embeddings.h5.
        tasks: the tasks (a task with ``error`` is reported as skipped; the others run).
        out: results folder.
        manifest: cohort manifest (for the by-modality robustness table; default: the cohort's).
        seed: probe seed.
        plots: write ``probe_metrics.png``.
        progress: print one line per (model, task).
        recipe: probe recipe (default ``pathalign``).
        allow_missing: drop (and count) samples the split names but the embeddings lack; otherwise that is
            an error naming every task affected, raised before any probe runs.
        missing_rates: when given, also the inference-time missing-modality degradation of every model with
            molecular embeddings (:mod:`pathalign.evaluate.missing`) at these rates, one hiding plan per seed
            of ``missing_seeds`` (default 0, 1, 2): ``missing_<model>.csv``/``.png`` and a section in the results.
        cohort: cohort folder or :class:`pathalign.cohort.Cohort` (the baselines' matrices, the id rule).
        modalities: representations to score (``wsi``, ``rna``, ``snp``, ``cnv``, ``methylation``, ``fused``,
            ``all`` = every modality the embeddings hold, plus ``fused``; the CLI's default); None: the slides
            when the embeddings have them (what callers before per-modality scoring got), else ``all``.
        baselines: score the raw/PCA/CCA baselines (needs ``cohort``).
        pca_components: components of the PCA baseline.
        cca_components: components of the CCA baseline (None: chosen on a validation part of the training patients).

    Returns:
        The results dictionary written to ``results.json``.
    """
    from .baselines import cohort_representations, cross_modal_baselines, describe, model_transform_options

    recipe = recipe or Recipe()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if cohort is not None and not hasattr(cohort, "matrix"):
        from ..cohort import load_cohort

        cohort = load_cohort(cohort)
    if manifest is None and cohort is not None:
        manifest = cohort.manifest
    rule = (cohort.meta.get("sources") or {}).get("id_rule", "tcga") if cohort is not None else "tcga"
    normalise = IdRule(rule if rule in ("tcga", "table") else "tcga").normalise_case
    embs = {name: read_embeddings(path) for name, path in models.items()}
    if not allow_missing:
        check_embeddings_cover(tasks, embs, normalise)
    results: dict = {"recipe": recipe.describe(), "aggregation": AGGREGATION, "allow_missing": allow_missing,
                     "models": {}, "representations": {},
                     "tasks": {t.name: {"type": t.task_type, "source": t.source, "sample_col": t.id_column
                                        if not t.error else None, **({"warnings": t.warnings} if t.warnings else {})}
                               for t in tasks}}
    reps_out = results["representations"]
    options, options_source = {}, "transform defaults"
    for emb in embs.values():
        options, options_source = model_transform_options(emb.get("_attrs", {}).get("model"))
        if options:
            break
    for name, path in models.items():
        emb = embs[name]
        held_out = emb.get("_attrs", {}).get("heldout_patients")
        mods = choose_modalities(emb, modalities if modalities is not None else (["wsi"] if "wsi" in emb else None))
        res: dict = {"tasks": {}, "embeddings": str(path), "modalities": mods}
        preds: dict = {}
        if "wsi" in emb and "wsi" in mods:
            for task in tasks:
                if progress:
                    print(f"bench: {name} / {task.name}", flush=True)
                res["tasks"][task.name], p = run_task(task, emb, seed, recipe, allow_missing, normalise)
                if p is not None:
                    preds[task.name] = p
            res["primary"] = "wsi"
            reps_out[f"{name}:wsi"] = {"kind": "model", "model": name, "modality": "wsi", "tasks": res["tasks"]}
        rep_preds = {}
        for rep in model_representations(name, emb, mods):
            reps_out[rep.name], rep_preds[rep.name] = _score_representation(rep, tasks, seed, recipe, normalise,
                                                                            progress, model=name)
        if "primary" not in res:
            primary = f"{name}:fused" if f"{name}:fused" in reps_out else next(
                (r for r in reps_out if reps_out[r].get("model") == name), None)
            if primary is None:
                res["tasks"] = {t.name: {"skipped": "the embeddings have no wsi group"} for t in tasks}
            else:
                res["tasks"], preds, res["primary"] = reps_out[primary]["tasks"], rep_preds[primary], primary
        if emb.get("pairs"):
            res["cross_modal"] = cross_modal(emb, held_out)
            res["cross_modal_patients"] = "held-out (not seen in training)" if held_out is not None else "all"
            if cohort is not None and baselines:
                res["cross_modal_baselines"] = cross_modal_baselines(cohort, emb, held_out, options, cca_components,
                                                                     pca_components, seed)
            if manifest is not None:
                res["by_modalities"] = by_modality_subset(emb, manifest, preds, held_out)
        if missing_rates:
            res["missing"] = _missing_curves(name, emb, tasks, missing_rates, missing_seeds or [0, 1, 2], out,
                                             held_out, plots)
        results["models"][name] = res
    if cohort is not None and baselines:
        wanted = list(cohort.modalities) if not modalities or "all" in modalities else list(modalities)
        results["baselines"] = describe(options_source, pca_components, cca_components)
        for rep in cohort_representations(cohort, wanted, options, pca_components):
            reps_out[rep.name], _ = _score_representation(rep, tasks, seed, recipe, normalise, progress)
    atomic_write_json(results, out / "results.json")
    atomic_write_text(render_markdown(results), out / "results.md")
    if plots:
        from .plots import plot_metrics

        plot_metrics(results, out / "probe_metrics.png")
    return results


def _score_representation(rep: Representation, tasks: list[Task], seed: int, recipe: Recipe, normalise,
                          progress: bool, model: str | None = None) -> tuple[dict, dict]:
    """``({kind, model, modality, note, tasks}, {task: predictions})`` of one per-patient representation."""
    entry: dict = {"kind": rep.kind, "model": model, "modality": rep.modality, "note": rep.note, "tasks": {}}
    preds = {}
    for task in tasks:
        if progress:
            print(f"bench: {rep.name} / {task.name}", flush=True)
        entry["tasks"][task.name], p = run_patient_task(task, rep, seed, recipe, normalise)
        if p is not None:
            preds[task.name] = p
    return entry, preds


def _missing_curves(name: str, emb: dict, tasks: list[Task], rates: list[float], seeds: list[int], out: Path,
                    held_out, plots: bool) -> dict:
    """Degradation curves of one model (files ``missing_<name>.csv``/``.png``); their verdict for the results."""
    from .missing import degradation, plot_curves, summarise, verdict

    if not any(m in emb for m in ("rna", "snp", "cnv", "methylation")):
        return {"skipped": "the embeddings have no molecular modality to hide"}
    usable = [t for t in tasks if not t.error and "case_id" in t.table.columns]
    df = degradation(emb, usable, rates, seeds, patients=held_out)
    summary = summarise(df)
    stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    atomic_write_text(summary.to_csv(index=False), out / f"missing_{stem}.csv")
    if plots and len(summary):
        plot_curves(summary, out / f"missing_{stem}.png")
    v = verdict(summary)
    return {"rates": list(rates), "seeds": list(seeds), "table": f"missing_{stem}.csv",
            "retrieval_patients": "held-out" if held_out is not None else "all",
            "verdict": v.to_dict(orient="records")}


def named_embeddings(items: list[str]) -> dict[str, str]:
    """``NAME=PATH`` or ``PATH`` (named by the file stem) → ``{name: path}``; two items with one name are an error.

    Args:
        items: the command-line values of ``--embeddings`` and ``--compare``, in order.

    Returns:
        name → path, in the given order.
    """
    out: dict[str, str] = {}
    for item in items:
        name, path = item.split("=", 1) if "=" in item else (Path(item).stem, item)
        if not name:
            raise TaskError(f"{item!r}: empty model name (use NAME=PATH)")
        if name in out:
            raise TaskError(f"two embeddings are named {name!r} ({out[name]} and {path}); name them NAME=PATH")
        out[name] = path
    return out
