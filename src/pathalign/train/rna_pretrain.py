"""``pathalign pretrain-rna``: pretrain pathalign's bulk-RNA foundation model on a cohort.

Every RNA sample of the cohort is used (patients without slides too). A held-out fraction
measures masked-reconstruction error against mean imputation; both are written to
``metrics.json`` and printed. The model is then used frozen by ``pathalign train``.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..cohort import load_cohort
from ..cohort.preprocess import make_transform
from ..devices import DEVICE_HELP, resolve_device
from ..errors import PathalignError
from ..io.atomic import atomic_write_json
from ..models.rna_fm import RNAFMConfig, RNAFoundationModel

MIN_SAMPLES = 10  # fewer leaves no meaningful held-out set


class RNAPretrainError(PathalignError):
    """Settings or a cohort that RNA pretraining cannot run with (no RNA, too few samples, bad option)."""


def _check_settings(n_genes: int, dim: int, depth: int, steps: int, batch_size: int, lr: float, mask_ratio: float,
                    holdout: float) -> None:
    """Raise :class:`RNAPretrainError` naming the first unusable option, before any work."""
    checks = [("--steps", steps, steps >= 1, "at least 1"), ("--batch-size", batch_size, batch_size >= 2, "at least 2"),
              ("--genes", n_genes, n_genes >= 1, "at least 1"), ("--dim", dim, dim >= 1, "at least 1"),
              ("--depth", depth, depth >= 0, "0 or more"), ("--lr", lr, lr > 0, "positive"),
              ("--mask-ratio", mask_ratio, 0 < mask_ratio < 1, "between 0 and 1 (exclusive)"),
              ("holdout", holdout, 0 < holdout < 1, "between 0 and 1 (exclusive)")]
    for option, value, ok, rule in checks:
        if not ok:
            raise RNAPretrainError(f"{option} {value}: must be {rule}")


def _masked_mse(model, x, observed, hidden, baseline) -> tuple[float, float]:
    """MSE of the model and of ``baseline`` ([G]) on entries that are hidden and observed."""
    sel = hidden & observed
    with torch.no_grad():
        pred = model(x, observed & ~hidden)
    err_model = float(((pred - x)[sel] ** 2).mean())
    err_base = float(((baseline.expand_as(x) - x)[sel] ** 2).mean())
    return err_model, err_base


def pretrain_rna(cohort_path: str | Path, out: str | Path, n_genes: int = 2000, dim: int = 128, depth: int = 1,
                 steps: int = 2000, batch_size: int = 64, lr: float = 1e-3, mask_ratio: float = 0.3,
                 holdout: float = 0.1, seed: int = 0, progress: bool = True,
                 device: str | torch.device = "cpu") -> dict:
    """Pretrain and save the RNA foundation model.

    Args:
        cohort_path: cohort folder (``pathalign cohort build``) with RNA for at least ``MIN_SAMPLES`` patients.
        out: folder for the model (written only when training has finished).
        n_genes, dim, depth, mask_ratio: model settings (see :class:`RNAFMConfig`).
        steps, batch_size, lr, holdout, seed: training settings.
        progress: show a progress bar and print the result.
        device: where the model trains (random draws stay on the CPU generator, so runs match across devices).

    Returns:
        The held-out metrics (also written to ``out/metrics.json``).

    Raises:
        RNAPretrainError: an unusable setting, a cohort without RNA or with too few samples; raised
            before anything is written.
    """
    _check_settings(n_genes, dim, depth, steps, batch_size, lr, mask_ratio, holdout)
    cohort = load_cohort(cohort_path)
    if "rna" not in cohort.modalities:
        raise RNAPretrainError(f"{cohort_path}: the cohort has no RNA data (build it with 'cohort build --rna ...')")
    rna = cohort.matrix("rna")
    if len(rna) < MIN_SAMPLES:
        raise RNAPretrainError(f"{cohort_path}: pretraining needs at least {MIN_SAMPLES} RNA samples, "
                               f"the cohort has {len(rna)}")
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    transform = make_transform("rna", cohort.meta, n_genes=min(n_genes, rna.shape[1])).fit(rna)
    values, observed = transform.transform_masked(rna)
    x, obs = torch.from_numpy(values).to(device), torch.from_numpy(observed).to(device)
    perm = rng.permutation(len(x))
    n_hold = max(1, int(round(holdout * len(x))))
    hold, train = perm[:n_hold], perm[n_hold:]
    cfg = RNAFMConfig(n_genes=x.shape[1], dim=dim, depth=depth, mask_ratio=mask_ratio)
    model = RNAFoundationModel(cfg).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.05)
    baseline = (x[train] * obs[train]).sum(0) / obs[train].sum(0).clamp_min(1)  # training mean per gene
    gen = torch.Generator().manual_seed(seed)
    hidden_eval = (torch.rand(x[hold].shape, generator=gen) < mask_ratio).to(device)
    losses = []
    t0 = time.perf_counter()
    bar = tqdm(range(steps), desc="pretrain-rna", disable=not progress, mininterval=1.0)
    for step in bar:
        model.train()
        idx = torch.from_numpy(rng.choice(train, size=min(batch_size, len(train)), replace=False))
        xb, ob = x[idx], obs[idx]
        hidden = (torch.rand(xb.shape, generator=gen) < mask_ratio).to(device)
        pred = model(xb, ob & ~hidden)
        sel = hidden & ob
        loss = ((pred - xb)[sel] ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        if step % 50 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.3f}")
    model.eval()
    err, base = _masked_mse(model, x[hold], obs[hold], hidden_eval, baseline)
    metrics = {"heldout_masked_mse": err, "mean_imputation_mse": base, "ratio": err / base,
               "samples_train": int(len(train)), "samples_heldout": int(n_hold), "genes": int(x.shape[1]),
               "steps": steps, "seconds": time.perf_counter() - t0, "final_train_loss": float(np.mean(losses[-50:]))}
    model.cpu().save(out, transform.state_dict(), metrics=metrics)
    atomic_write_json(metrics, Path(out) / "metrics.json")
    _plot_loss(losses, Path(out) / "loss.png")
    if progress:
        print(f"pretrain-rna: held-out masked MSE {err:.3f} vs mean imputation {base:.3f} "
              f"({err / base:.0%}); saved to {out}")
    return metrics


def _plot_loss(losses, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3))
    k = max(1, len(losses) // 100)
    smooth = np.convolve(losses, np.ones(k) / k, mode="valid")
    ax.plot(smooth)
    ax.set(xlabel="step", ylabel="masked MSE (train)", title="RNA foundation model pretraining")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cohort", required=True, help="cohort folder (pathalign cohort build)")
    p.add_argument("--out", required=True, help="folder for the pretrained model")
    p.add_argument("--genes", type=int, default=2000, help="top-variance genes modelled (default 2000)")
    p.add_argument("--dim", type=int, default=128, help="embedding dim (small cohorts: 32-64)")
    p.add_argument("--depth", type=int, default=1, help="residual SwiGLU blocks")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--mask-ratio", type=float, default=0.3, help="fraction of genes hidden per sample")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help=DEVICE_HELP)


def run(args: argparse.Namespace) -> int:
    pretrain_rna(args.cohort, args.out, n_genes=args.genes, dim=args.dim, depth=args.depth, steps=args.steps,
                 batch_size=args.batch_size, lr=args.lr, mask_ratio=args.mask_ratio, seed=args.seed,
                 device=resolve_device(args.device))
    return 0
