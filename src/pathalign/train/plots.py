"""Loss-curve plot of a training run."""
from __future__ import annotations

from pathlib import Path

import pandas as pd


def plot_loss_curves(log_csv: str | Path, out_png: str | Path) -> None:
    """Total and per-pair losses (smoothed) against the step, and the learned temperatures."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    df = pd.read_csv(log_csv)
    if df.empty:
        return
    k = max(1, len(df) // 50)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for col in [c for c in df.columns if c == "loss" or c.startswith("loss_")]:
        y = df[col].rolling(k, min_periods=1).mean()
        ax1.plot(df.step, y, label=col.replace("loss_", "") if col != "loss" else "total", lw=2.5 if col == "loss" else 1)
    ax1.set(xlabel="step", ylabel="loss", title="SigLIP loss (total and per pair)")
    ax1.legend(fontsize=7, ncol=2)
    for col in [c for c in df.columns if c.startswith("t_")]:
        ax2.plot(df.step, df[col], label=col[2:])
    ax2.set(xlabel="step", ylabel="exp(t)", title="learned temperature per pair")
    ax2.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
