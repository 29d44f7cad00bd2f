"""Collapse and imbalance diagnostics: is a modality's embedding collapsing, does one pair dominate?

The paper's failure signatures (reference summary): "embedding collapse — all modalities map
to similar representations" and "overfitting to a dominant modality — one modality drives all
predictions; examine per-pair loss contributions". Measured on a fixed validation batch:

* per modality: effective rank of the centred embeddings and mean pairwise cosine of the raw ones
  (:mod:`pathalign.geometry`);
* per pair: its share of the total loss and of the gradient norm reaching the shared encoders.

Thresholds (chosen, see ``docs/choices.md``):

* **collapse**: effective rank below :data:`COLLAPSE_RANK` (= 2): the batch's variation lies along
  essentially one direction, which can order patients on one axis but cannot separate more than
  two groups (cancer type alone has three in the synthetic cohort), or mean pairwise cosine above
  :data:`COLLAPSE_COSINE` (= 0.95): every patient points the same way, so the contrastive logits
  cannot tell positives from negatives whatever the temperature.
* **dominance**: with P >= 2 pairs, the largest pair's encoder gradient norm above :data:`DOMINANCE_RATIO`
  (= 3) times the median of the other pairs' norms. Relative to the others, not to a fixed share:
  shares sum to 1, so a share limit like ``max(0.5, 3 / P)`` can never be passed with P <= 3 pairs.
  With 2 pairs this is a share above 75 %; with the other pairs even, above ``3 / (P + 2)``
  (:func:`dominance_threshold`); a single pair never dominates.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..geometry import effective_rank, mean_pairwise_cosine

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter

    from ..models.pathalign_model import PathAlignModel

COLLAPSE_RANK = 2.0
COLLAPSE_COSINE = 0.95
DOMINANCE_RATIO = 3.0


@dataclass(frozen=True)
class ModalityHealth:
    """Geometry of one modality's embeddings on the validation batch."""

    modality: str
    n: int
    effective_rank: float
    mean_cosine: float

    @property
    def collapsed(self) -> bool:
        return self.effective_rank < COLLAPSE_RANK or self.mean_cosine > COLLAPSE_COSINE


def modality_health(embeddings: dict[str, np.ndarray]) -> dict[str, ModalityHealth]:
    """:class:`ModalityHealth` per modality of ``{modality: [n_m, d_m]}`` (modalities with < 2 rows skipped)."""
    out = {}
    for m, z in embeddings.items():
        z = np.asarray(z, dtype=np.float64)
        if z.shape[0] < 2:
            continue
        out[m] = ModalityHealth(m, int(z.shape[0]), effective_rank(z), mean_pairwise_cosine(z))
    return out


def dominance_threshold(n_pairs: int) -> float:
    """The share above which one of ``n_pairs`` pairs dominates when the other pairs are even.

    A pair dominates when its norm exceeds ``DOMINANCE_RATIO`` x the median of the others'
    (:func:`dominance_ratio`); with the others sharing ``1 - s`` evenly that is ``s > r / (P - 1 + r)``.
    1.0 (never) for fewer than 2 pairs.
    """
    if n_pairs < 2:
        return 1.0
    return DOMINANCE_RATIO / (n_pairs - 1 + DOMINANCE_RATIO)


def dominance_ratio(grad_share: dict[str, float], pair: str) -> float:
    """``pair``'s share over the median share of the other finite pairs (inf when they are all 0, NaN when none)."""
    others = [v for k, v in grad_share.items() if k != pair and np.isfinite(v)]
    share = grad_share[pair]
    if not others or not np.isfinite(share):
        return float("nan")
    med = float(np.median(others))
    return share / med if med > 0 else (float("inf") if share > 0 else float("nan"))


def shares(values: dict[str, float]) -> dict[str, float]:
    """Each value's share of the sum of the finite ones (NaN where a value is missing or the sum is 0)."""
    finite = {k: float(v) for k, v in values.items() if np.isfinite(v)}
    total = sum(abs(v) for v in finite.values())
    return {k: (abs(finite[k]) / total if k in finite and total > 0 else float("nan")) for k in values}


def warnings_for(health: dict[str, ModalityHealth], grad_share: dict[str, float]) -> list[str]:
    """Human-readable warnings: collapsed modalities and a dominating pair (empty when healthy)."""
    out = []
    for h in health.values():
        if h.collapsed:
            out.append(f"modality {h.modality!r} is collapsing: effective rank {h.effective_rank:.2f} "
                       f"(< {COLLAPSE_RANK:g}) / mean pairwise cosine {h.mean_cosine:.3f} "
                       f"(> {COLLAPSE_COSINE:g} is collapse) on {h.n} validation samples")
    finite = [v for v in grad_share.values() if np.isfinite(v)]
    n_other, top = len(finite) - 1, max(finite, default=float("nan"))
    for pair, share in grad_share.items():
        ratio = dominance_ratio(grad_share, pair)
        if np.isfinite(share) and share == top and ratio > DOMINANCE_RATIO:  # only the largest pair can dominate
            out.append(f"pair {pair} dominates: {share:.0%} of the gradient norm reaching the encoders, "
                       f"{ratio:.1f}x the median of the other {n_other} pair(s) (> {DOMINANCE_RATIO:g}x is dominance)")
    return out


def _dominance_rule(n_pairs: int) -> str:
    """The dominance rule in words, for ``diagnostics.md``."""
    if n_pairs < 2:
        return f"dominance: needs at least 2 pairs (this run has {n_pairs})."
    return (f"dominance: a pair's encoder gradient norm > {DOMINANCE_RATIO:g}x the median of the other pairs' "
            f"(with {n_pairs} pairs and the others even, a share above {dominance_threshold(n_pairs):.0%}).")


def pair_gradient_norms(per_pair_loss: dict, params: list) -> dict[str, float]:
    """L2 norm of each pair's loss gradient w.r.t. ``params`` (the shared encoders' parameters).

    Args:
        per_pair_loss: ``{pair name: scalar loss tensor}``, all from one forward pass (graph kept).
        params: the parameters whose gradient counts (parameters a pair does not reach count as zero).
    Returns:
        ``{pair name: gradient norm}``.
    """
    import torch

    params = [p for p in params if p.requires_grad]
    out = {}
    for name, loss in per_pair_loss.items():
        grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
        sq = sum(float(g.detach().double().pow(2).sum()) for g in grads if g is not None)
        out[name] = sq ** 0.5
    return out


def diagnose(model: PathAlignModel, batch: dict, balance: str = "siglip") -> dict:
    """Collapse and imbalance figures of ``model`` on one (validation) batch, in eval mode.

    Args:
        model: a :class:`~pathalign.models.pathalign_model.PathAlignModel` (not DDP-wrapped).
        batch: a training-layout batch (what :class:`~pathalign.cohort.model_view.CohortData` yields).
        balance: the loss's balance setting (the model's config).
    Returns:
        ``{"health": {modality: ModalityHealth}, "loss_share": {pair: share},
        "grad_share": {pair: share}, "grad_norm": {pair: norm}, "warnings": [str, ...]}``.
    """
    import torch

    from ..models.siglip import MultimodalSigLIPLoss

    was_training = model.training
    model.eval()  # no dropout: the figures describe the model, not one dropout draw
    try:
        with torch.enable_grad():
            emb, valid = model(batch, project=False)
            loss_fn = MultimodalSigLIPLoss(balance=balance)
            per_pair = {}
            for p in model.project_pairs(emb, valid):
                out = loss_fn([p])
                if p.key in out.per_pair:  # a pair with a valid entry in this batch
                    per_pair[p.key] = out.loss
            encoders = [p for name, p in model.named_parameters() if not name.startswith("pair_heads.")]
            norms = pair_gradient_norms(per_pair, encoders)
        health = modality_health({m: emb[m][valid[m].bool()].detach().float().cpu().numpy() for m in emb})
        grad_share = shares(norms)
        return {"health": health, "loss_share": shares({k: float(v.detach()) for k, v in per_pair.items()}),
                "grad_share": grad_share, "grad_norm": norms, "warnings": warnings_for(health, grad_share)}
    finally:
        model.train(was_training)


def diagnostics_row(step: int, result: dict) -> dict:
    """One flat CSV/TensorBoard row of :func:`diagnose`'s result (``erank/<m>``, ``cos/<m>``, ``grad_share/<pair>`` ...)."""
    row: dict = {"step": step}
    for m, h in result["health"].items():
        row[f"erank/{m}"] = h.effective_rank
        row[f"cos/{m}"] = h.mean_cosine
    for pair, v in result["loss_share"].items():
        row[f"loss_share/{pair}"] = v
    for pair, v in result["grad_share"].items():
        row[f"grad_share/{pair}"] = v
    return row


class DiagnosticsLog:
    """Every ``every`` steps: :func:`diagnose` on a fixed validation batch, a row in ``RUN/diagnostics.csv``
    (and TensorBoard), warnings on stderr; :meth:`finish` writes ``RUN/diagnostics.md``.

    A resumed run keeps the rows up to the step it resumes from (the file is rewritten atomically).
    """

    def __init__(self, run_dir: str | Path, batch: dict, every: int, balance: str = "siglip", start_step: int = 0):
        import csv

        from ..io.atomic import atomic_write_text

        self.path = Path(run_dir) / "diagnostics.csv"
        self.batch, self.every, self.balance = batch, every, balance
        self.rows: list[dict] = []
        if self.path.is_file() and start_step > 0:
            with open(self.path, newline="") as fh:
                self.rows = [r for r in csv.DictReader(fh) if int(r["step"]) <= start_step]
        atomic_write_text(self._csv(), self.path)
        self.warnings: dict[str, int] = {}
        self.last: dict | None = None

    def _csv(self) -> str:
        import csv
        import io

        fields = list(dict.fromkeys(k for r in self.rows for k in r)) or ["step"]
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=fields)
        w.writeheader()
        w.writerows(self.rows)
        return buf.getvalue()

    def maybe_log(self, step: int, model: PathAlignModel, last_step: bool = False,
                  writer: SummaryWriter | None = None) -> list[str]:
        """Diagnose at multiples of ``every`` (and at the last step); returns the new warnings."""
        import sys

        from ..io.atomic import atomic_write_text

        if self.every <= 0 or not (step % self.every == 0 or last_step):
            return []
        result = diagnose(getattr(model, "module", model), self.batch, self.balance)
        row = diagnostics_row(step, result)
        self.rows.append(row)
        atomic_write_text(self._csv(), self.path)
        if writer is not None:
            for k, v in row.items():
                if k != "step" and np.isfinite(v):
                    writer.add_scalar(f"diagnostics/{k}", v, step)
        for w in result["warnings"]:
            if w not in self.warnings:
                print(f"pathalign: warning: step {step}: {w}", file=sys.stderr, flush=True)
            self.warnings[w] = step
        self.last = {"step": step, **result}
        return result["warnings"]

    def finish(self) -> dict:
        """Summary for the run's metrics; writes ``diagnostics.md`` beside the CSV."""
        from ..io.atomic import atomic_write_text

        if self.last is None:
            return {}
        health = self.last["health"]
        lines = ["# Training diagnostics", "",
                 f"Fixed validation batch, every {self.every} steps (`diagnostics.csv`); last at step {self.last['step']}.",
                 f"Collapse: effective rank < {COLLAPSE_RANK:g} or mean pairwise cosine > {COLLAPSE_COSINE:g}; "
                 + _dominance_rule(len(self.last["grad_share"])), "",
                 "| modality | n | effective rank | mean cosine | collapsed |", "|---|---|---|---|---|"]
        for m, h in health.items():
            lines.append(f"| {m} | {h.n} | {h.effective_rank:.2f} | {h.mean_cosine:.3f} | {'yes' if h.collapsed else 'no'} |")
        lines += ["", "| pair | loss share | gradient share |", "|---|---|---|"]
        for pair, g in self.last["grad_share"].items():
            lines.append(f"| {pair} | {self.last['loss_share'].get(pair, float('nan')):.2f} | {g:.2f} |")
        lines += ["", "Warnings: " + ("none" if not self.warnings else "")]
        lines += [f"- {w} (last seen at step {s})" for w, s in self.warnings.items()]
        atomic_write_text("\n".join(lines) + "\n", self.path.with_suffix(".md"))
        return {"step": self.last["step"], "warnings": list(self.warnings),
                "effective_rank": {m: h.effective_rank for m, h in health.items()},
                "mean_cosine": {m: h.mean_cosine for m, h in health.items()},
                "grad_share": self.last["grad_share"], "loss_share": self.last["loss_share"]}
