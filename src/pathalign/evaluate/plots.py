"""Benchmark plots: probe metric per task and model, and a 2-D map of slide embeddings."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_metrics(results: dict, out_png: str | Path) -> None:
    """Grouped bars: the primary metric (mean ± std) of each task, one bar per model; cross-modal recall@5 too."""
    from .metrics import PRIMARY

    plt = _plt()
    models = list(results["models"])
    rows = []
    for task, info in results["tasks"].items():
        metric = PRIMARY[info["type"]]
        rows.append((f"{task}\n{metric}", [results["models"][m]["tasks"].get(task, {}).get(metric) for m in models]))
    pairs = sorted({p for m in models for p in results["models"][m].get("cross_modal", {})})
    for p in pairs:
        vals = []
        for m in models:
            r = results["models"][m].get("cross_modal", {}).get(p, {})
            vals.append({"mean": r["recall@5"], "std": 0.0} if "recall@5" in r else None)
        rows.append((f"{p}\nrecall@5", vals))
    if not rows:
        return
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(rows) * max(1, len(models)) ** 0.5), 4))
    width = 0.8 / max(1, len(models))
    x = np.arange(len(rows))
    for i, m in enumerate(models):
        means = [v[i]["mean"] if v[i] else np.nan for _, v in rows]
        stds = [v[i]["std"] if v[i] else 0 for _, v in rows]
        ax.bar(x + i * width - 0.4 + width / 2, means, width, yerr=stds, label=m, capsize=2)
    ax.set_xticks(x, [r for r, _ in rows], fontsize=7, rotation=30, ha="right")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("score")
    ax.legend(fontsize=7, ncol=min(4, len(models)))
    ax.set_title("Probe / retrieval metrics per task and model")
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)


def plot_embedding_map(embeddings: np.ndarray, labels: np.ndarray, out_png: str | Path, title: str, seed: int = 0) -> None:
    """t-SNE of slide embeddings coloured by ``labels`` (e.g. cancer type)."""
    from sklearn.manifold import TSNE
    from sklearn.preprocessing import StandardScaler

    plt = _plt()
    x = StandardScaler().fit_transform(np.asarray(embeddings, np.float64))
    xy = TSNE(n_components=2, perplexity=min(30, max(5, len(x) // 4)), random_state=seed, init="pca").fit_transform(x)
    labels = np.asarray(labels)
    fig, ax = plt.subplots(figsize=(5, 4.5))
    for lab in sorted(set(labels)):
        sel = labels == lab
        ax.scatter(xy[sel, 0], xy[sel, 1], s=10, label=lab, alpha=0.8)
    ax.legend(fontsize=7, markerscale=2)
    ax.set(title=title, xticks=[], yticks=[])
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
