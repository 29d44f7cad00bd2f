"""Loss-curve plot of a training run."""
from __future__ import annotations

from pathlib import Path

import pandas as pd


def plot_loss_curves(log_csv: str | Path, out_png: str | Path, selected_step: int | None = None) -> None:
    """Total and per-pair losses (smoothed) against the step, and the learned temperatures.

    When ``log.csv`` has validation columns (``val/loss``, ``val/recall@5``...), the validation loss is
    drawn over the training loss and a third panel shows validation recall@5 (mean and per pair),
    with ``selected_step`` (the exported model's step) marked.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    df = pd.read_csv(log_csv)
    if df.empty:
        return
    val = df.dropna(subset=["val/loss"]) if "val/loss" in df else df.iloc[:0]
    k = max(1, len(df) // 50)
    fig, axes = plt.subplots(1, 3 if len(val) else 2, figsize=(16 if len(val) else 11, 4))
    ax1, ax2 = axes[0], axes[1]
    for col in [c for c in df.columns if c == "loss" or c.startswith("loss_")]:
        y = df[col].rolling(k, min_periods=1).mean()
        ax1.plot(df.step, y, label=col.replace("loss_", "") if col != "loss" else "total", lw=2.5 if col == "loss" else 1)
    if len(val):
        ax1.plot(val.step, val["val/loss"], "k--o", ms=3, lw=1.5, label="validation")
    ax1.set(xlabel="step", ylabel="loss", title="SigLIP loss (total and per pair)")
    ax1.legend(fontsize=7, ncol=2)
    for col in [c for c in df.columns if c.startswith("t_")]:
        ax2.plot(df.step, df[col], label=col[2:])
    ax2.set(xlabel="step", ylabel="exp(t)", title="learned temperature per pair")
    ax2.legend(fontsize=7, ncol=2)
    if len(val):
        ax3 = axes[2]
        for col in [c for c in val.columns if c.startswith("val/recall@5/") and val[c].notna().any()]:
            ax3.plot(val.step, val[col], lw=1, alpha=0.7, label=col.rsplit("/", 1)[1])
        if val["val/recall@5"].notna().any():
            ax3.plot(val.step, val["val/recall@5"], "k-o", ms=3, lw=2.5, label="mean")
        if selected_step is not None:
            ax3.axvline(selected_step, color="r", ls=":", label=f"selected (step {selected_step})")
            ax1.axvline(selected_step, color="r", ls=":")
        ax3.set(xlabel="step", ylabel="recall@5", title="validation cross-modal recall@5")
        ax3.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
