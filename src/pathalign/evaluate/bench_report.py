"""``results.md`` of ``pathalign bench``: the task x model table, every representation with its baselines, the
cross-modal retrieval beside its CCA, task warnings, then every metric with n per task and fold."""
from __future__ import annotations

from .metrics import PRIMARY

AGGREGATION = ("mean ± SE over folds; SE = population std (ddof 0) / sqrt(number of folds run), "
               "as Patho-Bench's BaseExperiment.get_mean_se")


def _fmt(m: dict | None) -> str:
    if not m:
        return "—"
    return f"{m['mean']:.3f} ± {m.get('se', m.get('std', float('nan'))):.3f}"


def _counts(r: dict) -> str:
    """``n=…`` of a task result: samples used, and what was dropped."""
    n = r.get("n")
    if not n:
        return ""
    parts = [f"n={n['samples_used']} {n['sample_col']}s"]
    if n.get("rows_without_label"):
        parts.append(f"{n['rows_without_label']} rows without label")
    if n.get("samples_without_embedding"):
        parts.append(f"{n['samples_without_embedding']} without embedding dropped")
    if n.get("slides_without_embedding"):
        parts.append(f"{n['slides_without_embedding']} listed slides without embedding")
    return ", ".join(parts)


def _representation_table(results: dict) -> list[str]:
    """Rows = representations (each model's modalities and fused, then the baselines), columns = tasks."""
    reps = results.get("representations") or {}
    if not reps:
        return []
    tasks = list(results["tasks"])
    head = []
    for t in tasks:
        head.append(f"{t} {PRIMARY[results['tasks'][t]['type']]}")
        if results["tasks"][t]["type"] == "classification":
            head.append(f"{t} mAP@5")
    lines = ["", "## Every representation", "",
             "Each task on each modality's embedding, the fused multimodal one and the baselines (`raw:<m>`: the "
             "cohort's features through the model's preprocessing; `pca:<m>`: their PCA; both fitted on each "
             "training fold); molecular, fused and baseline rows are scored per patient.", "",
             "| representation | " + " | ".join(head) + " |", "|---|" + "---|" * len(head)]
    for name, entry in reps.items():
        cells = []
        for t in tasks:
            r = entry["tasks"].get(t, {})
            metric = PRIMARY[results["tasks"][t]["type"]]
            cells.append("skipped" if "skipped" in r else _fmt(r.get(metric)) + (f" (n={r['n']['samples_used']})"
                                                                                if r.get("n") else ""))
            if results["tasks"][t]["type"] == "classification":
                cells.append(f"{r['retrieval']['mAP@5']:.3f}" if "retrieval" in r else "—")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    skipped = [(name, t, r["skipped"]) for name, entry in reps.items() for t, r in entry["tasks"].items()
               if "skipped" in r]
    if skipped:
        lines += ["", "Skipped: " + "; ".join(f"{n} / {t}: {why}" for n, t, why in skipped[:30])
                  + (f"; and {len(skipped) - 30} more (results.json)" if len(skipped) > 30 else "")]
    return lines


def render_markdown(results: dict) -> str:
    """``results.md``: one table (tasks × models), then every metric with n per task and fold."""
    models = list(results["models"])
    recipe = results.get("recipe", {})
    lines = ["# Benchmark results", "",
             f"Recipe: **{recipe.get('name', 'pathalign')}** — {recipe.get('classification', '')}; "
             f"{recipe.get('survival', '')}; features {recipe.get('features', '')}; tuning: {recipe.get('tuning', '')}.",
             "", f"Primary metric per task, {results.get('aggregation', AGGREGATION)}.", "",
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
            lines.append(f"| {task} (retrieval by label) | mAP@5 | " + " | ".join(cells) + " |")
    pairs = sorted({p for m in models for p in results["models"][m].get("cross_modal", {})})
    for p in pairs:
        cells = []
        for m in models:
            r = results["models"][m].get("cross_modal", {}).get(p)
            cells.append("—" if r is None else (f"skipped: {r['skipped']}" if "skipped" in r else
                                                 f"{r['recall@5']:.3f} (chance {r['chance@5']:.3f}, n={r['n']})"))
        lines.append(f"| {p} (cross-modal) | recall@5 | " + " | ".join(cells) + " |")
        if any(results["models"][m].get("cross_modal_baselines") for m in models):
            cells = []
            for m in models:
                r = results["models"][m].get("cross_modal_baselines", {}).get(f"cca:{p}")
                cells.append("—" if r is None else (f"skipped: {r['skipped']}" if "skipped" in r else
                                                     f"{r['recall@5']:.3f} ({r['n_components']} comp., n={r['n']})"))
            lines.append(f"| cca:{p} (baseline, same patients) | recall@5 | " + " | ".join(cells) + " |")
    primary = {m: results["models"][m]["primary"] for m in models if results["models"][m].get("primary") not in
               (None, "wsi")}
    if primary:
        lines += ["", "Models without slides are shown by their multimodal representation: " +
                  ", ".join(f"{m} = {p}" for m, p in primary.items()) + "."]
    lines += _representation_table(results)
    warned = {t: info["warnings"] for t, info in results["tasks"].items() if info.get("warnings")}
    if warned:
        lines += ["", "## Task warnings", ""] + [f"- {w}" for ws in warned.values() for w in ws]
    lines += ["", "## All metrics", ""]
    for m in models:
        lines += [f"### {m}", ""]
        for task, r in results["models"][m]["tasks"].items():
            if "skipped" in r:
                lines.append(f"- **{task}**: skipped — {r['skipped']}" + (f" ({_counts(r)})" if r.get("n") else ""))
                continue
            parts = [f"{k} {_fmt(v)}" for k, v in r.items() if isinstance(v, dict) and "mean" in v]
            if "retrieval" in r:
                parts.append("retrieval " + ", ".join(f"{k} {v:.3f}" for k, v in r["retrieval"].items()))
            lines.append(f"- **{task}** ({_counts(r)}): " + "; ".join(parts))
            folds = r.get("n", {}).get("folds", {})
            if folds:
                lines.append("  - n per fold (train/val/test): " + ", ".join(
                    f"{f} {c['train']}/{c['val']}/{c['test']}" for f, c in folds.items()))
            if r.get("tuning") and any(v != "validation" for v in r["tuning"].values()):
                lines.append("  - tuning: " + ", ".join(f"{f} {v}" for f, v in r["tuning"].items()))
            if r.get("skipped_folds"):
                lines.append("  - skipped folds: " + "; ".join(r["skipped_folds"]))
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
            for p, r in results["models"][m].get("cross_modal_baselines", {}).items():
                if "skipped" in r:
                    lines.append(f"| {p} | skipped: {r['skipped']} | | | | |")
                else:
                    lines.append(f"| {p} ({r['n_components']} components, fitted on {r['n_train']} training "
                                 f"patients) | {r['recall@1']:.3f} | {r['recall@5']:.3f} | {r['recall@10']:.3f} | "
                                 f"{r['chance@5']:.3f} | {r['n']} |")
        miss = results["models"][m].get("missing")
        if miss and "verdict" in miss:
            lines += ["", f"Missing modalities at inference (rates {miss['rates']}, seeds {miss['seeds']}; curves in "
                          f"`{miss['table']}` and its plot): metric with nothing hidden, with everything of the "
                          "modality hidden, and the curve's shape.", "",
                      "| task / pair | metric | hidden | at 0 | at 1 | drop | shape |", "|---|---|---|---|---|---|---|"]
            for r in miss["verdict"]:
                lines.append(f"| {r['name']} | {r['metric']} | {r['hidden']} | {r['at_0']:.3f} | {r['at_1']:.3f} | "
                             f"{r['drop']:+.3f} | {r['shape']} |")
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
