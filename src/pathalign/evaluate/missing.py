"""Inference-time missing-modality degradation: how do tasks and retrieval fare as modalities vanish?

The paper's open question 2 ("does performance degrade gracefully or catastrophically?"). For each
rate r and each non-slide modality m (and for all of them at once), a seeded fraction r of the test
patients who have m lose it at inference; the probe itself was fitted on the training patients as
they are. Metrics are computed per rate and seed; curves show mean and 95 % t-interval over seeds.

Choices (also in ``docs/choices.md``):

* **Patient representation**: the concatenation of one block per modality (slides of a patient
  averaged), each block standardised with the training patients' statistics; a missing or hidden
  block is 0, the training mean — the usual mean imputation, which is what a deployed linear
  probe sees. The probe (the bench's own :func:`linear_probe`, C chosen on the validation part) is
  fitted once per fold on the training patients as they are and scored on every hiding variant.
* **Nested hiding**: for one seed the patients are put in one random order per modality and the
  first ``round(r * n)`` are hidden, so a patient hidden at 0.25 is hidden at 0.5 too: curves
  change only by what the extra hidden patients take away, not by a new draw.
* **Retrieval**: cross-modal recall@k is computed on the test patients that still have both sides;
  chance (k / n) is reported beside it, since n shrinks as r grows.
"""
from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

import numpy as np
import pandas as pd

from ..hiding import HidingPlan
from ..io.embeddings import patient_ids, patient_means
from .probes import linear_probe
from .retrieval import patient_pair_space, recall_at_k
from .stats import mean_ci

ALL = "all"


def patient_blocks(emb: dict, modalities: list[str]) -> dict[str, dict[str, np.ndarray]]:
    """``{modality: {case_id: embedding}}`` (slides of one patient averaged)."""
    return {m: patient_means(patient_ids(emb, m), emb[m]["embeddings"], dtype=np.float64) for m in modalities}


def fused_matrix(blocks: dict[str, dict[str, np.ndarray]], patients: list[str], train: list[str],
                 hidden: dict[str, set[str]] | None = None) -> np.ndarray:
    """Patient matrix [n, sum d_m]: standardised blocks (training statistics), zero where absent or hidden."""
    hidden = hidden or {}
    cols = []
    for m, table in blocks.items():
        d = len(next(iter(table.values())))
        ref = np.array([table[p] for p in train if p in table])
        mu = ref.mean(0) if len(ref) else np.zeros(d)
        sd = ref.std(0) if len(ref) > 1 else np.ones(d)
        sd = np.where(sd > 1e-12, sd, 1.0)
        block = np.zeros((len(patients), d))
        for i, p in enumerate(patients):
            if p in table and p not in hidden.get(m, ()):
                block[i] = (table[p] - mu) / sd
        cols.append(block)
    return np.concatenate(cols, axis=1)


def _task_patients(task) -> pd.DataFrame:
    t = task.table.copy()
    t["case_id"] = t["case_id"].astype(str)
    return t.drop_duplicates("case_id").reset_index(drop=True)


def degradation(emb: dict, tasks: list, rates: list[float], seeds: list[int],
                ks: tuple[int, ...] = (5,), patients: Collection[str] | None = None) -> pd.DataFrame:
    """Every classification task's balanced accuracy and every pair's recall@k under hidden modalities.

    Args:
        emb: embeddings as :func:`pathalign.io.embeddings.read_embeddings` returns them.
        tasks: benchmark tasks (classification tasks are scored; others are left out).
        rates: fractions of each non-slide modality hidden at inference.
        seeds: one hiding plan per seed.
        ks: recall@k cut-offs for cross-modal retrieval.
        patients: restrict cross-modal retrieval to these patients (e.g. the model's held-out ones).
    Returns:
        Long table: ``kind`` (task|retrieval), ``name``, ``metric``, ``hidden`` (modality or ``all``),
        ``rate``, ``seed``, ``value``, ``n`` (patients scored) and, for retrieval, ``chance``.
    """
    modalities = [m for m in ("wsi", "rna", "snp", "cnv", "methylation") if m in emb]
    molecular = [m for m in modalities if m != "wsi"]
    if not molecular:
        raise ValueError("the embeddings have no molecular modality to hide")
    blocks = patient_blocks(emb, modalities)
    present = {m: list(blocks[m]) for m in molecular}
    targets = [*molecular, ALL] if len(molecular) > 1 else molecular
    rows = []
    for seed in seeds:
        plan = HidingPlan.draw(present, seed)
        variants = [(target, rate, {m: plan.hidden(m, rate) for m in (molecular if target == ALL else [target])})
                    for target in targets for rate in rates]
        for task in tasks:
            if task.task_type == "classification":
                rows += [dict(r, seed=seed) for r in _task_rows(task, blocks, variants, seed)]
        for target, rate, hide in variants:
            rows += [dict(r, hidden=target, rate=rate, seed=seed) for r in _retrieval_rows(emb, hide, ks, patients)]
    return pd.DataFrame(rows)


def _task_rows(task, blocks, variants, seed) -> list[dict]:
    """Balanced accuracy of one probe per fold (fitted once), scored on every hiding variant of the test part."""
    from sklearn.metrics import balanced_accuracy_score

    t = _task_patients(task)
    t = t[t.case_id.isin(set().union(*(set(b) for b in blocks.values())))].reset_index(drop=True)
    y = t[task.label].astype(str).to_numpy()
    scores: dict[int, list[float]] = {}
    for f in task.folds:
        sel = {r: (t[f] == r).to_numpy() for r in ("train", "val", "test")}
        if not sel["test"].any() or len(set(y[sel["train"]])) < 2:
            continue
        if not sel["val"].any():
            sel["val"] = sel["train"]
        ids = {r: t.case_id[v].tolist() for r, v in sel.items()}
        x_te = np.concatenate([fused_matrix(blocks, ids["test"], ids["train"], hide) for _, _, hide in variants])
        y_te = np.tile(y[sel["test"]], len(variants))
        out = linear_probe(fused_matrix(blocks, ids["train"], ids["train"]), y[sel["train"]],
                           fused_matrix(blocks, ids["val"], ids["train"]), y[sel["val"]], x_te, y_te,
                           task.ordinal, seed)
        pred = out["_pred"].reshape(len(variants), -1)  # [variants * n_test] -> [variants, n_test]
        for v in range(len(variants)):
            scores.setdefault(v, []).append(float(balanced_accuracy_score(y[sel["test"]], pred[v])))
    return [{"kind": "task", "name": task.name, "metric": "balanced_accuracy", "hidden": variants[v][0],
             "rate": variants[v][1], "value": float(np.mean(s)), "n": int(len(t))} for v, s in scores.items()]


def _retrieval_rows(emb, hide, ks, patients=None) -> list[dict]:
    rows = []
    for key in sorted(emb.get("pairs", {})):
        a, b = key.split("-")
        try:
            pids, xa, xb = patient_pair_space(emb, a, b, patients)
        except (KeyError, ValueError):
            continue
        keep = [i for i, p in enumerate(pids) if p not in hide.get(a, ()) and p not in hide.get(b, ())]
        if len(keep) < 2:
            rows.append({"kind": "retrieval", "name": key, "metric": f"recall@{ks[0]}", "value": np.nan,
                         "n": len(keep), "chance": np.nan})
            continue
        rec = recall_at_k(xa[keep] @ xb[keep].T, ks)
        for k in ks:
            rows.append({"kind": "retrieval", "name": key, "metric": f"recall@{k}", "value": rec[f"recall@{k}"],
                         "n": len(keep), "chance": min(1.0, k / len(keep))})
    return rows


def summarise(df: pd.DataFrame, level: float = 0.95) -> pd.DataFrame:
    """Mean and ``level`` t-interval over seeds per (kind, name, metric, hidden, rate)."""
    def agg(v: pd.Series) -> pd.Series:
        ci = mean_ci(v.dropna().to_numpy(float), level)
        return pd.Series({"mean": ci["mean"], "ci_low": ci["low"], "ci_high": ci["high"], "seeds": ci["n"]})

    keys = ["kind", "name", "metric", "hidden", "rate"]
    out = df.groupby(keys, sort=True)["value"].apply(agg).unstack().reset_index()
    if "chance" in df:
        out = out.merge(df.groupby(keys)["chance"].mean().reset_index(), on=keys, how="left")
    return out


def verdict(summary: pd.DataFrame) -> pd.DataFrame:
    """Per curve: drop from rate 0 to 1, and 'graceful' unless some step falls by more than half the total drop
    beyond its interval (a cliff) or the metric at rate 1 falls below the slide-only level (all hidden)."""
    rows = []
    for (kind, name, metric, hidden), g in summary.groupby(["kind", "name", "metric", "hidden"]):
        g = g.sort_values("rate")
        m = g["mean"].to_numpy()
        if len(m) < 2 or not np.isfinite(m).all():
            continue
        drop = m[0] - m[-1]
        steps = -np.diff(m)
        cliff = bool(drop > 0 and (steps > 0.5 * drop + 1e-12).any() and len(m) > 2)
        rows.append({"kind": kind, "name": name, "metric": metric, "hidden": hidden,
                     "at_0": m[0], "at_1": m[-1], "drop": drop, "shape": "cliff" if cliff else "graceful"})
    return pd.DataFrame(rows)


def plot_curves(summary: pd.DataFrame, path: str | Path, xlabel: str = "missing rate at inference") -> None:
    """One panel per task / retrieval pair: metric against missing rate, one line per hidden modality, CI band.

    Every metric here is a proportion in [0, 1] (balanced accuracy, C-index, recall@k): the t-bands of a
    few seeds can overshoot it, so they are drawn clipped to [0, 1] (the CSV keeps the raw interval).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = list(summary.groupby(["kind", "name", "metric"]))
    cols = min(4, len(panels)) or 1
    rows = int(np.ceil(len(panels) / cols)) or 1
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.9 * rows), squeeze=False)
    for ax, ((kind, name, metric), g) in zip(axes.flat, panels):
        for hidden, h in g.groupby("hidden"):
            h = h.sort_values("rate")
            style = dict(color="black", lw=2) if hidden == ALL else {}
            ax.plot(h.rate, h["mean"], marker="o", ms=3, label=hidden, **style)
            ax.fill_between(h.rate, h.ci_low.clip(0, 1), h.ci_high.clip(0, 1), alpha=0.15,
                            **({"color": "black"} if hidden == ALL else {}))
        if "chance" in g and g["chance"].notna().any():
            c = g[g.hidden == ALL] if (g.hidden == ALL).any() else g
            c = c.groupby("rate")["chance"].mean()
            ax.plot(c.index, c.values, ls=":", color="grey", label="chance")
        ax.set_title(f"{name} ({kind})", fontsize=9)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(metric)
        ax.set_ylim(0, 1.02)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(6, len(labels)), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)
