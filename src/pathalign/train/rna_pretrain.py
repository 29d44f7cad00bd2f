"""``pathalign pretrain-rna``: pretrain pathalign's bulk-RNA foundation model on a cohort.

It fits on the RNA of the training patients only: the split ``pathalign train`` draws with
the same seed (:func:`~pathalign.train.data.split_patients`, the trainer's ``val_fraction``
and ``stratify``), so the trainer's validation patients, on which it scores and selects, never
reach the foundation model (patients without slides count too). ``patients.json`` in the model
folder records the split and the patients it saw. A held-out fraction of those training
samples measures masked-reconstruction error against mean imputation; both are written to
``metrics.json`` and printed. The model is then used frozen by ``pathalign train``.
"""
from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..cohort import load_cohort
from ..errors import PathalignError
from ..io.model_folder import read_fitted_patients, resolve_folder, write_pretrain_records
from ..models.preprocessing import make_transform
from ..models.rna_fm import RNAFMConfig, RNAFoundationModel
from .data import split_notes, training_split

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
                 device: str | torch.device = "cpu", val_fraction: float | None = None,
                 stratify: str | None = None) -> dict:
    """Pretrain and save the RNA foundation model on the training split's RNA samples.

    Args:
        cohort_path: cohort folder (``pathalign cohort build``) with RNA for at least ``MIN_SAMPLES`` patients.
        out: folder for the model (written only when training has finished).
        n_genes, dim, depth, mask_ratio: model settings (see :class:`RNAFMConfig`).
        steps, batch_size, lr, holdout, seed: training settings; ``seed`` is also the split's seed (give
            the ``--seed`` the alignment will be trained with).
        val_fraction, stratify: the split's settings (None: the trainer's defaults, ``TrainConfig``'s);
            ``stratify=""`` splits unstratified.
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
    split = training_split(cohort.manifest, seed, val_fraction, stratify)
    rna_all = cohort.matrix("rna")
    rna = rna_all.loc[rna_all.index.isin(set(split["train"]))]
    if len(rna) < MIN_SAMPLES:
        raise RNAPretrainError(f"{cohort_path}: pretraining needs at least {MIN_SAMPLES} RNA samples of training "
                               f"patients; the cohort has {len(rna_all)} RNA samples, {len(rna)} of them training "
                               f"patients (the others are the trainer's validation patients, left out)")
    notes = split_notes(cohort.manifest, split, split["stratify"])
    notes.append(f"fitting on the RNA of {len(rna)} training patients; {len(rna_all) - len(rna)} validation "
                 f"patients with RNA left out")
    if n_genes > rna.shape[1]:
        notes.append(f"--genes {n_genes}: the cohort has {rna.shape[1]} genes; using all {rna.shape[1]}")
    if progress:
        for line in notes:
            print(f"pretrain-rna: {line}")
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
               "steps": steps, "seconds": time.perf_counter() - t0, "final_train_loss": float(np.mean(losses[-50:])),
               "genes_requested": int(n_genes), "patients_excluded_val": int(len(rna_all) - len(rna))}
    model.cpu().save(out, transform.state_dict(), metrics=metrics)
    write_pretrain_records(out, metrics, {"split": {k: split[k] for k in ("seed", "val_fraction", "stratify")},
                                          "fitted_on": [str(p) for p in rna.index],
                                          "left_out_val": [str(p) for p in rna_all.index if p not in set(rna.index)],
                                          "notes": notes})
    _plot_loss(losses, Path(out) / "loss.png")
    if progress:
        print(f"pretrain-rna: held-out masked MSE {err:.3f} vs mean imputation {base:.3f} "
              f"({err / base:.0%}); saved to {out}")
    return metrics


def val_patients_seen(fm_dir: str | Path, val_ids: Iterable[str]) -> list[str]:
    """The patients of ``val_ids`` whose RNA the foundation model in ``fm_dir`` was fitted on.

    A folder written before ``patients.json`` existed was fitted on every RNA sample: all of ``val_ids``
    are returned then (the caller cannot tell which of them had RNA).
    """
    seen = read_fitted_patients(resolve_folder(fm_dir))
    return list(val_ids) if seen is None else [p for p in val_ids if p in seen]


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
