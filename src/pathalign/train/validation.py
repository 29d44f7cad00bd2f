"""Model selection on validation: score the held-out validation patients every N steps, keep the best.

Every ``val_every`` steps (and at the last step) the trainer scores the model on its validation
patients (the split's ``val`` side, those with at least two modalities), in eval mode (no dropout):

* ``val/loss``: the training loss (multimodal SigLIP, same balance) over the validation patients,
  in chunks of at most ``batch_size`` patients (the mean weighted by chunk size);
* ``val/recall@5/<a>-<b>``: cross-modal recall@5 through the pair heads among the validation
  patients having both modalities, the mean of the ``a → b`` and ``b → a`` directions (a tie ranks
  against the query, as :func:`pathalign.evaluate.retrieval.recall_at_k`); only pairs with at least
  :data:`MIN_PAIR_PATIENTS` such patients (below that, recall@5 is near 1 by chance);
* ``val/recall@5``: the mean over those pairs.

Selection (``select_metric``):

* ``"recall@5"`` (default): the highest ``val/recall@5``; a tie goes to the lower ``val/loss``,
  then to the earlier step. When no pair has enough validation patients the run selects on
  ``"loss"`` instead and says so once.
* ``"loss"``: the lowest ``val/loss`` (a tie goes to the earlier step).
* ``"last"``: no selection, the final step (validation is still logged).

A non-finite score never counts as an improvement. Early stopping (``early_stopping_patience``
K > 0) stops after K validations in a row without improvement. The best weights are held in
memory (a CPU copy) and saved in every checkpoint with the selector's state, so a resumed run
selects exactly as an uninterrupted one. Scoring draws nothing from the global RNGs.

The validation patients choose the step, so a figure measured on them afterwards (``bench`` on the
split's ``val`` patients) is slightly optimistic; the selection is one choice among ~20 checkpoints.
"""
from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from ..cohort.model_view import CohortData
from .data import BatchSpec, StepBatches

if TYPE_CHECKING:
    from ..models.pathalign_model import PathAlignModel
    from .trainer import Trainer

MIN_PAIR_PATIENTS = 10
SELECT_METRICS = ("recall@5", "loss", "last")
METRIC_NAMES = {"recall@5": "val/recall@5 (mean over pairs, higher is better)",
                "loss": "val/loss (lower is better)", "last": "none (the final step)"}


def default_val_every(steps: int, checkpoint_every: int) -> int:
    """Validation interval when none is given: ``min(checkpoint_every, max(10, steps // 20))``.

    About 20 validations a run, never fewer than one per checkpoint, never more often than every 10 steps.
    """
    return max(1, min(checkpoint_every, max(10, steps // 20)))


def check_settings(val_every: int | None, select_metric: str, patience: int) -> None:
    """Raise ``ValueError`` naming the first unusable validation setting."""
    if val_every is not None and val_every < 0:
        raise ValueError(f"val_every must be >= 0 (0: no validation), got {val_every}")
    if select_metric not in SELECT_METRICS:
        raise ValueError(f"select_metric must be one of {list(SELECT_METRICS)}, got {select_metric!r}")
    if patience < 0:
        raise ValueError(f"early_stopping_patience must be >= 0 (0: off), got {patience}")


def validation_columns(pairs: Sequence[tuple[str, str]]) -> list[str]:
    """The validation columns of ``log.csv`` (empty on steps without validation)."""
    return ["val/loss", "val/recall@5"] + [f"val/recall@5/{a}-{b}" for a, b in pairs]


def recall5_both_ways(u: np.ndarray, w: np.ndarray) -> float:
    """Mean of ``u → w`` and ``w → u`` recall@5 for matched rows (``[n, P]`` each; ties rank against the query)."""
    s = np.asarray(u, np.float64) @ np.asarray(w, np.float64).T  # [n, n]
    true = np.diag(s)
    rank_ab = (s >= true[:, None]).sum(axis=1) - 1
    rank_ba = (s >= true[None, :]).sum(axis=0) - 1
    return float(0.5 * (np.mean(rank_ab < 5) + np.mean(rank_ba < 5)))


@dataclass(frozen=True)
class ValidationScore:
    """One validation: the loss and the recall@5 of each scored pair."""

    step: int
    loss: float
    recall: dict[str, float] = field(default_factory=dict)

    @property
    def recall_mean(self) -> float:
        vals = [v for v in self.recall.values() if math.isfinite(v)]
        return float(np.mean(vals)) if vals else float("nan")

    def row(self) -> dict[str, float]:
        """Its ``log.csv`` / TensorBoard columns (a non-finite value is left out: an empty cell)."""
        row = {"val/loss": self.loss, "val/recall@5": self.recall_mean,
               **{f"val/recall@5/{k}": v for k, v in self.recall.items()}}
        return {k: v for k, v in row.items() if math.isfinite(v)}


class _Chunks(StepBatches):
    """``dataset[k]`` = the k-th of ``n`` near-equal chunks of ``idx``, in order (every patient once)."""

    def __init__(self, data: CohortData, idx: np.ndarray, spec: BatchSpec, n: int):
        super().__init__(data, idx, spec)
        self.chunks = np.array_split(np.asarray(idx), n)

    def patients(self, step: int) -> np.ndarray:
        return self.chunks[step]


class ValidationScorer:
    """Scores a model on the validation patients (see the module docstring).

    Args:
        data: the trainer's :class:`~pathalign.cohort.model_view.CohortData`.
        val_ids: the validation patients.
        batch_size: at most this many patients per forward (the training batch size).
        max_tokens, seed: slide subsampling (seeded: every validation sees the same patches).
        balance: the loss balance (the model's config).
        to_device: moves a batch to the model's device.
        autocast: a context manager factory for the forward (the trainer's).
        pairs: the model's pairs ``(a, b)`` (default: every pair of ``data.modalities`` in order).
        wsi_level: ``"slide"`` or ``"patient"`` (the model's; see :class:`~pathalign.train.data.StepBatches`).
    """

    def __init__(self, data: CohortData, val_ids: Sequence[str], batch_size: int, max_tokens: int, seed: int,
                 balance: str, to_device: Callable[[dict], dict], autocast: Callable[[], Any],
                 pairs: Sequence[tuple[str, str]] | None = None, wsi_level: str = "slide"):
        from ..models.siglip import MultimodalSigLIPLoss

        self.idx = data.eligible(list(val_ids))
        self.loss_fn = MultimodalSigLIPLoss(balance)
        self.to_device, self.autocast = to_device, autocast
        self.batches = None
        if len(self.idx) >= 2:
            bs = min(batch_size, len(self.idx))
            n = -(-len(self.idx) // bs)
            self.batches = _Chunks(data, self.idx, BatchSpec(seed, bs, max_tokens, 0.0, wsi_level=wsi_level), n)
        mods = data.modalities
        pairs = pairs if pairs is not None else [(a, b) for i, a in enumerate(mods) for b in mods[i + 1:]]
        both = {f"{a}-{b}": int((data.valid[a][self.idx] & data.valid[b][self.idx]).sum()) for a, b in pairs}
        self.pair_patients = both
        self.scored_pairs = [k for k, n in both.items() if n >= MIN_PAIR_PATIENTS]

    @property
    def usable(self) -> bool:
        """At least two validation patients to score."""
        return self.batches is not None

    def score(self, model: PathAlignModel, step: int) -> ValidationScore:
        """The :class:`ValidationScore` of ``model`` (eval mode, no gradients; its mode is restored)."""
        if self.batches is None:
            return ValidationScore(step, float("nan"))
        was_training = model.training
        device = next(model.parameters()).device
        model.eval()
        total, count = 0.0, 0
        u: dict[str, list] = {k: [] for k in self.scored_pairs}
        w: dict[str, list] = {k: [] for k in self.scored_pairs}
        try:
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.no_grad():
                for k in range(len(self.batches.chunks)):
                    batch = self.to_device(self.batches[k])
                    with self.autocast():
                        pairs = model(batch)
                        out = self.loss_fn(pairs)
                    n = len(batch["patients"])
                    total, count = total + float(out.loss) * n, count + n
                    for p in pairs:
                        if p.key in u:
                            both = (p.valid_a & p.valid_b).bool()
                            u[p.key].append(p.u[both].float().cpu().numpy())
                            w[p.key].append(p.w[both].float().cpu().numpy())
        finally:
            model.train(was_training)
        recall = {k: recall5_both_ways(np.concatenate(u[k]), np.concatenate(w[k])) for k in self.scored_pairs}
        return ValidationScore(step, total / max(count, 1), recall)


class ModelSelector:
    """Keeps the best validation score and a CPU copy of its weights; counts validations without improvement.

    Args:
        metric: one of :data:`SELECT_METRICS` (the one actually used, after any fallback).
        patience: stop after this many validations in a row without improvement (0: never).
        requested: the metric the user asked for (recorded when it differs from ``metric``).
        fallback_reason: why ``metric`` differs from ``requested``.
    """

    def __init__(self, metric: str, patience: int = 0, requested: str | None = None, fallback_reason: str = ""):
        self.metric, self.patience = metric, patience
        self.requested, self.fallback_reason = requested or metric, fallback_reason
        self.best: dict | None = None  # {"step", "loss", "recall@5", "key"}
        self.best_state: dict[str, Tensor] | None = None
        self.since_best = 0
        self.validations = 0
        self.stopped_at: int | None = None

    def key(self, score: ValidationScore) -> tuple | None:
        """The score as a tuple compared with ``>`` (larger is better); None when not finite."""
        loss = score.loss if math.isfinite(score.loss) else math.inf
        if self.metric == "recall@5":
            r = score.recall_mean
            return (r, -loss) if math.isfinite(r) else None
        if self.metric == "loss":
            return (-loss,) if math.isfinite(loss) else None
        return (float(score.step),)

    def update(self, score: ValidationScore, model: torch.nn.Module) -> bool:
        """Record ``score`` (of ``model``'s current weights); True when it is the new best."""
        self.validations += 1
        key = self.key(score)
        improved = key is not None and (self.best is None or key > tuple(self.best["key"]))
        if improved:
            self.best = {"step": score.step, "loss": score.loss, "recall@5": score.recall_mean, "key": list(key)}
            self.best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
            self.since_best = 0
        else:
            self.since_best += 1
        if self.patience and self.since_best >= self.patience and self.metric != "last":
            self.stopped_at = score.step
        return improved

    @property
    def should_stop(self) -> bool:
        return self.stopped_at is not None

    # ------------------------------------------------------------------ checkpoint state
    def state_dict(self) -> dict:
        """What a checkpoint keeps: ``{"selection": json str, "best_model": {name: tensor}}``."""
        info = {"metric": self.metric, "requested": self.requested, "best": self.best, "since_best": self.since_best,
                "validations": self.validations, "stopped_at": self.stopped_at}
        return {"selection": json.dumps(info), "best_model": dict(self.best_state or {})}

    def load_state_dict(self, state: dict) -> None:
        """Restore from a checkpoint (one written before selection existed leaves the selector fresh).

        The trainer refuses to resume with another ``select_metric`` before this is called.
        """
        if "selection" not in state:
            return
        info = json.loads(state["selection"])
        self.metric, self.best, self.since_best = info["metric"], info["best"], info["since_best"]
        self.validations, self.stopped_at = info["validations"], info["stopped_at"]
        self.best_state = dict(state.get("best_model") or {}) or None

    # ------------------------------------------------------------------ reporting
    def summary(self, final_step: int, val_every: int) -> dict:
        """The model card's / config's ``training.selection`` of the selected model."""
        if self.best is None or self.metric == "last":
            why = (self.fallback_reason or "select_metric 'last'") if self.metric == "last" else \
                "no validation produced a finite score"
            return {"step": final_step, "metric": "last", "value": None, "final_step": final_step,
                    "validations": self.validations, "val_every": val_every, "early_stopped": self.should_stop,
                    "reason": f"the final step's weights ({why})"}
        value = self.best["recall@5"] if self.metric == "recall@5" else self.best["loss"]
        reason = (f"best {METRIC_NAMES[self.metric]} over {self.validations} validations every {val_every} steps"
                  + (" (ties: lower val/loss, then the earlier step)" if self.metric == "recall@5" else
                     " (ties: the earlier step)"))
        if self.requested != self.metric:
            reason += f"; selected on {self.metric} instead of {self.requested}: {self.fallback_reason}"
        if self.should_stop:
            reason += f"; early stopping after {self.patience} validations without improvement (at step {self.stopped_at})"
        return {"step": self.best["step"], "metric": f"val/{self.metric}", "value": value,
                "val_loss": self.best["loss"], "val_recall@5": self.best["recall@5"], "final_step": final_step,
                "validations": self.validations, "val_every": val_every, "early_stopped": self.should_stop,
                "reason": reason}


class Validation:
    """The trainer's validation: a scorer, a selector and the interval; see the module docstring.

    Build it with :meth:`for_trainer`; call :meth:`maybe_score` after every step (on every rank, so that
    early stopping is decided alike everywhere).
    """

    def __init__(self, scorer: ValidationScorer, selector: ModelSelector, every: int, steps: int):
        self.scorer, self.selector, self.every, self.steps = scorer, selector, every, steps

    @classmethod
    def for_trainer(cls, trainer: Trainer) -> Validation | None:
        """The validation of a :class:`~pathalign.train.trainer.Trainer` (None when ``val_every`` is 0)."""
        cfg = trainer.cfg
        every = default_val_every(cfg.steps, cfg.checkpoint_every) if cfg.val_every is None else cfg.val_every
        if every == 0:
            return None
        scorer = ValidationScorer(trainer.data, trainer.splits.get("val", []), cfg.batch_size, cfg.max_tokens,
                                  cfg.seed, trainer.model_config.balance, trainer._to_device, trainer.autocast,
                                  trainer.model.pair_heads.pairs, cfg.wsi_level)
        metric, reason = cfg.select_metric, ""
        if not scorer.usable and metric != "last":
            metric = "last"
            reason = f"fewer than 2 validation patients with two modalities ({len(scorer.idx)})"
        elif metric == "recall@5" and not scorer.scored_pairs:
            metric = "loss"
            reason = (f"no modality pair has {MIN_PAIR_PATIENTS} validation patients with both modalities "
                      f"({', '.join(f'{k}: {n}' for k, n in scorer.pair_patients.items())})")
        if reason and trainer.rank == 0:
            print(f"pathalign: note: model selection on {metric}, not {cfg.select_metric}: {reason}",
                  file=sys.stderr, flush=True)
        selector = ModelSelector(metric, cfg.early_stopping_patience, cfg.select_metric, reason)
        if trainer.state is not None:
            selector.load_state_dict(trainer.state)
        return cls(scorer, selector, every, cfg.steps)

    def maybe_score(self, step: int, model: PathAlignModel) -> dict[str, float]:
        """Score at multiples of ``every`` and at the last step; returns the ``log.csv`` columns ({} otherwise)."""
        if not self.scorer.usable or not (step % self.every == 0 or step == self.steps):
            return {}
        score = self.scorer.score(model, step)
        self.selector.update(score, model)
        return score.row()

    @property
    def should_stop(self) -> bool:
        return self.selector.should_stop

    @property
    def best_step(self) -> int | None:
        return self.selector.best["step"] if self.selector.best else None


def export_models(model: PathAlignModel, run: Path, validation: Validation | None, final_step: int) -> Path:
    """Write ``run/model-last`` (the final step) and ``run/model`` (the selected step); returns ``run/model``.

    Each folder's ``config.json`` ``training.selection`` (and model card) says which step it holds and why.
    ``model`` is left holding the final weights.
    """
    run = Path(run)
    info = dict(model.training_info or {})
    last_sel = {"step": final_step, "metric": "last", "value": None, "final_step": final_step,
                "reason": "the final step's weights; model/ holds the validation-selected ones"}
    if validation is None:
        selected = {"step": final_step, "metric": "last", "value": None, "final_step": final_step,
                    "reason": "the final step's weights (validation off: val_every 0)"}
    else:
        selected = validation.selector.summary(final_step, validation.every)
    best_state = validation.selector.best_state if validation is not None else None
    try:
        model.training_info = {**info, "selection": last_sel}
        model.save_pretrained(run / "model-last")
        model.training_info = {**info, "selection": selected}
        if best_state is None or selected["step"] == final_step:
            return model.save_pretrained(run / "model")
        final = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        model.load_state_dict(best_state)
        try:
            return model.save_pretrained(run / "model")
        finally:
            model.load_state_dict(final)
    finally:
        model.training_info = {**info, "selection": selected}
