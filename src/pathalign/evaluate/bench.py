"""``pathalign bench``: linear probes, survival, slide retrieval and cross-modal retrieval of one or
more embedding sets on Patho-Bench split folders or tasks derived from a cohort.

Outputs in ``--out``: ``results.json`` (every metric, mean and std over folds, skipped tasks with
their reason), ``results.md`` (one table, tasks x models, then details) and plots.
"""
from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import numpy as np
import pandas as pd

from .embed import read_embeddings
from ..io.atomic import atomic_write_json, atomic_write_text
from .probes import cox_probe, linear_probe
from .retrieval import cross_modal_retrieval, label_retrieval, patient_pair_space, recall_at_k
from .tasks import Task, TaskError, derive_tasks, load_pathobench_tasks
from .metrics import PRIMARY


def _wsi_lookup(emb: dict, level: str) -> dict[str, np.ndarray]:
    """slide_id → embedding, or case_id → mean of its slides' embeddings."""
    g = emb["wsi"]
    if level == "slide_id":
        return dict(zip(g["ids"], g["embeddings"]))
    cases = g.get("case_ids", g["ids"])
    acc: dict[str, list] = {}
    for c, e in zip(cases, g["embeddings"]):
        acc.setdefault(c, []).append(e)
    return {c: np.mean(v, axis=0) for c, v in acc.items()}


def run_task(task: Task, emb: dict, seed: int = 0) -> tuple[dict, pd.DataFrame | None]:
    """Metrics of ``task`` on the slide embeddings in ``emb`` (mean/std over folds) and per-item test predictions."""
    if "wsi" not in emb:
        return {"skipped": "the embeddings have no wsi group"}, None
    lookup = _wsi_lookup(emb, task.id_column)
    t = task.table[task.table[task.id_column].astype(str).isin(lookup)].reset_index(drop=True)
    if t.empty:
        return {"skipped": f"no {task.id_column} of the task has an embedding (task ids e.g. "
                           f"{task.table[task.id_column].astype(str).head(3).tolist()})"}, None
    x = np.stack([lookup[i] for i in t[task.id_column].astype(str)])
    per_fold: dict[str, list] = {}
    skipped_folds, preds = [], []
    for f in task.folds:
        parts = {r: np.flatnonzero(t[f].to_numpy() == r) for r in ("train", "val", "test")}
        if len(parts["test"]) == 0:
            skipped_folds.append(f"{f}: no test samples")
            continue
        if len(parts["val"]) == 0:
            parts["val"] = parts["train"]
        if task.task_type == "classification":
            y = t[task.label].astype(str).to_numpy()
            if len(np.unique(y[parts["train"]])) < 2:
                skipped_folds.append(f"{f}: one class in train")
                continue
            m = linear_probe(x[parts["train"]], y[parts["train"]], x[parts["val"]], y[parts["val"]],
                             x[parts["test"]], y[parts["test"]], task.ordinal, seed)
            preds.append(pd.DataFrame({"case_id": t.case_id.iloc[parts["test"]].to_numpy(), "fold": f,
                                       "y": y[parts["test"]], "pred": m.pop("_pred")}))
        else:
            tt, ee = t.OS_days.to_numpy(float), t.OS_event.to_numpy(int)
            try:
                m = cox_probe(*(arr for r in ("train", "val", "test") for arr in
                                (x[parts[r]], tt[parts[r]], ee[parts[r]])))
            except ValueError as e:
                skipped_folds.append(f"{f}: {e}")
                continue
        for k, v in m.items():
            per_fold.setdefault(k, []).append(v)
    if not per_fold:
        reason = "; ".join(skipped_folds) or "no fold could be run"
        if task.task_type == "classification" and t[task.label].nunique() < 2:
            reason = f"label column {task.label!r} has one class"
        return {"skipped": reason}, None
    out = {k: {"mean": float(np.mean(v)), "std": float(np.std(v)), "n_folds": len(v)} for k, v in per_fold.items()}
    if skipped_folds:
        out["skipped_folds"] = skipped_folds
    if task.task_type == "classification":
        groups = t.case_id.astype(str).to_numpy()
        out["retrieval"] = label_retrieval(x, t[task.label].astype(str).to_numpy(), groups)
    return out, (pd.concat(preds) if preds else None)


def cross_modal(emb: dict, patients=None) -> dict:
    """Recall@1/5/10 (and chance) for every pair in the embeddings, on ``patients`` when given."""
    out = {}
    for key in sorted(emb.get("pairs", {})):
        a, b = key.split("-")
        try:
            out[key] = cross_modal_retrieval(emb, a, b, patients)
        except ValueError as e:
            out[key] = {"skipped": str(e)}
    return out


def by_modality_subset(emb: dict, manifest: pd.DataFrame, preds: dict[str, pd.DataFrame], patients, min_n: int = 8):
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
              seed: int = 0, plots: bool = True, progress: bool = True) -> dict:
    """Benchmark every embeddings file of ``models`` (name → embeddings.h5) on ``tasks``; writes results."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict = {"models": {}, "tasks": {t.name: {"type": t.task_type, "source": t.source} for t in tasks}}
    for name, path in models.items():
        emb = read_embeddings(path)
        held_out = emb.get("_attrs", {}).get("heldout_patients")
        res: dict = {"tasks": {}, "embeddings": str(path)}
        preds = {}
        for task in tasks:
            if progress:
                print(f"bench: {name} / {task.name}", flush=True)
            res["tasks"][task.name], p = run_task(task, emb, seed)
            if p is not None:
                preds[task.name] = p
        if emb.get("pairs"):
            res["cross_modal"] = cross_modal(emb, held_out)
            res["cross_modal_patients"] = "held-out (not seen in training)" if held_out is not None else "all"
            if manifest is not None:
                res["by_modalities"] = by_modality_subset(emb, manifest, preds, held_out)
        results["models"][name] = res
    atomic_write_json(results, out / "results.json")
    atomic_write_text(render_markdown(results), out / "results.md")
    if plots:
        from .plots import plot_metrics

        plot_metrics(results, out / "probe_metrics.png")
    return results


def _fmt(m: dict | None) -> str:
    if not m:
        return "—"
    return f"{m['mean']:.3f} ± {m['std']:.3f}"


def render_markdown(results: dict) -> str:
    models = list(results["models"])
    lines = ["# Benchmark results", "", "Mean ± standard deviation over folds (primary metric per task).", "",
             "| task | metric | " + " | ".join(models) + " |", "|---|---|" + "---|" * len(models)]
    for task, info in results["tasks"].items():
        metric = PRIMARY[info["type"]]
        cells = []
        for m in models:
            r = results["models"][m]["tasks"].get(task, {})
            cells.append(f"skipped: {r['skipped']}" if "skipped" in r else _fmt(r.get(metric)))
        lines.append(f"| {task} | {metric} | " + " | ".join(cells) + " |")
        if info["type"] == "classification":
            cells = [(f"{r['retrieval']['mAP@5']:.3f}" if "retrieval" in r else "—")
                     for r in (results["models"][m]["tasks"].get(task, {}) for m in models)]
            lines.append(f"| {task} (slide retrieval) | mAP@5 | " + " | ".join(cells) + " |")
    pairs = sorted({p for m in models for p in results["models"][m].get("cross_modal", {})})
    for p in pairs:
        cells = []
        for m in models:
            r = results["models"][m].get("cross_modal", {}).get(p)
            cells.append("—" if r is None else (f"skipped: {r['skipped']}" if "skipped" in r else
                                                 f"{r['recall@5']:.3f} (chance {r['chance@5']:.3f}, n={r['n']})"))
        lines.append(f"| {p} (cross-modal) | recall@5 | " + " | ".join(cells) + " |")
    lines += ["", "## All metrics", ""]
    for m in models:
        lines += [f"### {m}", ""]
        for task, r in results["models"][m]["tasks"].items():
            if "skipped" in r:
                lines.append(f"- **{task}**: skipped — {r['skipped']}")
                continue
            parts = [f"{k} {_fmt(v)}" for k, v in r.items() if isinstance(v, dict) and "mean" in v]
            if "retrieval" in r:
                parts.append("retrieval " + ", ".join(f"{k} {v:.3f}" for k, v in r["retrieval"].items()))
            lines.append(f"- **{task}**: " + "; ".join(parts))
        cm = results["models"][m].get("cross_modal")
        if cm:
            lines += ["", f"Cross-modal retrieval through the pair adapters ({results['models'][m]['cross_modal_patients']} patients):",
                      "", "| pair | R@1 | R@5 | R@10 | chance@5 | n |", "|---|---|---|---|---|---|"]
            for p, r in cm.items():
                if "skipped" in r:
                    lines.append(f"| {p} | skipped: {r['skipped']} | | | | |")
                else:
                    lines.append(f"| {p} | {r['recall@1']:.3f} | {r['recall@5']:.3f} | {r['recall@10']:.3f} | "
                                 f"{r['chance@5']:.3f} | {r['n']} |")
        sub = results["models"][m].get("by_modalities")
        if sub:
            cols = sorted({k for row in sub for k in row} - {"modalities", "patients"})
            lines += ["", "Robustness to missing modalities (patients grouped by the modalities they have):", "",
                      "| modalities | patients | " + " | ".join(cols) + " |", "|---|---|" + "---|" * len(cols)]
            for row in sub:
                lines.append(f"| {row['modalities']} | {row['patients']} | " +
                             " | ".join(f"{row[c]:.3f}" if c in row else "—" for c in cols) + " |")
        lines.append("")
    return "\n".join(lines) + "\n"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--embeddings", nargs="+", required=True,
                   help="embeddings.h5 files, optionally NAME=PATH (several = compared in one table)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--tasks", help="Patho-Bench split folder (TSV + YAML per task)")
    src.add_argument("--cohort", help="derive tasks from this cohort's clinical labels")
    p.add_argument("--compare", nargs="*", default=[], help="more NAME=PATH embeddings to compare (baselines, ablations)")
    p.add_argument("--folds", type=int, default=5, help="folds for cohort-derived tasks")
    p.add_argument("--labels", default=None, help="comma-separated label columns (default: every categorical one)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="results folder")


def _named(items) -> dict[str, str]:
    out = {}
    for i, item in enumerate(items):
        name, _, path = item.partition("=") if "=" in item else (Path(item).stem if i else "model", "", item)
        out[name] = path
    return out


def run(args) -> int:
    from ..cohort import load_cohort

    try:
        manifest = None
        if args.cohort:
            manifest = load_cohort(args.cohort).manifest
            tasks = derive_tasks(manifest, args.folds, args.seed,
                                 labels=args.labels.split(",") if args.labels else None)
        else:
            tasks = load_pathobench_tasks(args.tasks)
        run_bench({**_named(args.embeddings), **_named(args.compare)}, tasks, args.out, manifest, args.seed)
    except (TaskError, FileNotFoundError, KeyError, ValueError) as e:
        print(f"error: {e}")
        return 1
    print((Path(args.out) / "results.md").read_text().split("## All metrics")[0])
    return 0
