"""``pathalign train``: align the modalities of a cohort; DDP under torchrun; exact resume.

A run folder holds ``checkpoints/step_*.pt`` (model, optimizer, scheduler, step, RNG states,
sampler position, configs, preprocessing), ``log.csv`` and ``tb/`` (TensorBoard) with the
loss, per-pair losses, the learned temperatures and biases and the validation scores,
``loss_curves.png``, and the exports ``model/`` (``load_model``; the step selected on the
validation patients, see :mod:`.validation`) and ``model-last/`` (the final step). Batches
are a pure function of (seed, step), so a run killed at any moment and resumed ends with the
same weights (bit-identical on CPU).
"""
from __future__ import annotations

import csv
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..errors import PathalignError
from ..hiding import hidden_in_training
from ..cohort import load_cohort
from ..cohort.model_view import CohortData
from ..distributed import setup_distributed
from ..io.atomic import atomic_path, atomic_write_json
from ..io.checkpoints import CheckpointError, checkpoint_name, latest_checkpoint, read_checkpoint, write_checkpoint
from ..io.features_contract import features_scale
from ..io.stale_tmp import remove_stale_tmp
from ..io.model_folder import dataclass_from_dict
from ..models.pathalign_model import WSI_LEVELS, PathAlignConfig, PathAlignModel, load_preset, upgrade_state_dict
from ..models.preprocessing import MODEL_TRANSFORMS
from ..models.siglip import LossOutput, MultimodalSigLIPLoss
from .data import DEFAULT_STRATIFY, DEFAULT_VAL_FRACTION, BatchSpec, StepBatches, split_notes, split_patients
from .loader_workers import worker_init
from .run_identity import ResumeMismatch, check_resume, run_identity, saved_modalities
from .validation import Validation, export_models, validation_columns
from .validation import check_settings as check_validation_settings
from .rng_state import gather_states, restore_from_checkpoint, seed_rank_stream


class TrainingError(PathalignError, RuntimeError):
    """Training stopped (non-finite loss, bad checkpoint, incompatible resume)."""


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation and run settings (defaults from the preset's ``train`` section); never modified."""

    preset: str = "tiny"
    steps: int = 300
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_steps: int = 20
    max_tokens: int = 512  # patches per slide per step; with wsi_level "patient", per patient (all its slides)
    wsi_level: str = "slide"  # "patient": a patient's slides read as one sequence (recorded in the model's config)
    modality_dropout: float = 0.0
    checkpoint_every: int = 100
    keep_checkpoints: int = 2
    grad_clip: float = 1.0
    seed: int = 0
    val_fraction: float = DEFAULT_VAL_FRACTION
    stratify: str | None = DEFAULT_STRATIFY
    workers: int = 0
    device: str = "cpu"
    modalities: list[str] | None = None
    complete_cases: bool = False  # train only on patients with every modality (the complete-case baseline)
    train_missing_rate: float = 0.0  # hide this fraction of the training patients' molecular data (hiding.py)
    model_overrides: dict = field(default_factory=dict)
    transform_options: dict = field(default_factory=dict)
    rna_fm: str | None = None
    rna_embeddings: str | None = None
    slide_encoder_weights: str | None = None
    features: str | None = None
    progress: bool = True
    # scale (see train/gradcache.py, io/feature_reader.py)
    micro_batch: int | None = None  # gradient caching: rows per micro-batch (None: the whole batch at once)
    micro_batch_tokens: int | None = None  # with micro_batch: also cap the slide tokens per micro-batch
    checkpoint_activations: bool = False  # recompute slide-encoder blocks in the backward pass
    feature_cache_mb: float | None = None  # feature cache of all loader processes (None: 5 % of RAM, <= 4 GiB)
    diagnostics_every: int = 50  # collapse/imbalance diagnostics on a fixed validation batch (0: off)
    # model selection on validation (see train/validation.py)
    val_every: int | None = None  # score the validation patients every N steps (None: validation.default_val_every; 0: off)
    select_metric: str = "recall@5"  # "recall@5" (val recall@5 mean over pairs), "loss" (val loss) or "last"
    early_stopping_patience: int = 0  # stop after K validations without improvement (0: off)

    def __post_init__(self):
        if self.steps < 1 or self.batch_size < 2:
            raise ValueError("steps must be >= 1 and batch_size >= 2")
        if not 0 <= self.modality_dropout < 1:
            raise ValueError("modality_dropout must be in [0, 1)")
        if not 0 <= self.train_missing_rate <= 1:
            raise ValueError(f"train_missing_rate must be in [0, 1], got {self.train_missing_rate}")
        if self.micro_batch is not None and self.micro_batch < 1:
            raise ValueError(f"micro_batch must be >= 1, got {self.micro_batch}")
        if self.micro_batch_tokens is not None and self.micro_batch is None:
            raise ValueError("micro_batch_tokens needs micro_batch (gradient caching)")
        if self.feature_cache_mb is not None and self.feature_cache_mb < 0:
            raise ValueError(f"feature_cache_mb must be >= 0, got {self.feature_cache_mb}")
        if self.wsi_level not in WSI_LEVELS:
            raise ValueError(f"wsi_level must be one of {WSI_LEVELS}, got {self.wsi_level!r}")
        if "wsi_level" in self.model_overrides:
            raise ValueError("wsi_level is a training setting (--wsi-level, or wsi_level: at the top of the YAML), "
                             "not a model: override")
        check_validation_settings(self.val_every, self.select_metric, self.early_stopping_patience)

    @classmethod
    def from_preset(cls, preset: str, **overrides: Any) -> "TrainConfig":
        """The preset's training defaults with ``overrides`` (None values ignored); unknown keys are an error."""
        base = dict(load_preset(preset)["train"])
        base.update({k: v for k, v in overrides.items() if v is not None})
        base["preset"] = preset
        return dataclass_from_dict(cls, base, "training settings")


def lr_lambda(warmup: int, total: int) -> Callable[[int], float]:
    """Linear warm-up then cosine decay to 0 (as a multiplier of the base lr)."""

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return f


DECAYED_MODULES = (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups chosen by module type: only the weights of linear/conv layers are decayed.

    Everything else — biases, norm layers, embeddings, the CLS/register tokens (parameters a
    module owns directly) and the pair heads' temperatures and biases — gets no weight decay.
    Frozen parameters are left out.
    """
    decay, no_decay = [], []
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if p.requires_grad:
                (decay if isinstance(module, DECAYED_MODULES) and name == "weight" else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _identity(batch):
    return batch


def _features_encoder(data: CohortData) -> str | None:
    """The ``encoder`` attribute of the first features file the data uses (None when not recorded)."""
    from ..io.features_contract import file_encoder

    first = next((s for ss in data.slides for s in ss), None)
    return None if first is None else file_encoder(data.features_dir / f"{first}.h5")


class Trainer:
    """Builds data, model and optimiser from a cohort and a :class:`TrainConfig`; ``fit()`` trains."""

    def __init__(self, cohort_path: str | Path, run_dir: str | Path, cfg: TrainConfig, resume: bool = False):
        self.cfg, self.run = cfg, Path(run_dir)
        self.dist = setup_distributed(cfg.device)
        self.rank, self.world, self.device = self.dist.rank, self.dist.world_size, self.dist.device
        self.cohort = load_cohort(cohort_path)
        self.run.mkdir(parents=True, exist_ok=True)
        for stale in remove_stale_tmp(self.run, self._ckpt_dir()):  # left by writes killed in earlier runs
            print(f"train: removed {stale} (the temporary file of a killed write)", file=sys.stderr)
        self.state = self._latest_checkpoint() if resume else None
        if self.state is not None:
            # a key missing from an older checkpoint is a setting added since: it was trained at its default
            saved = {**{f.name: f.default for f in fields(TrainConfig)}, **json.loads(self.state["train_config"])}
            for key in ("seed", "batch_size", "steps", "preset", "max_tokens", "modality_dropout", "modalities",
                        "train_missing_rate", "select_metric", "wsi_level"):
                if saved.get(key) != asdict(cfg).get(key) and not (key == "modalities" and cfg.modalities is None):
                    raise TrainingError(f"--resume with a different {key}: checkpoint has {saved.get(key)!r}, "
                                        f"now {asdict(cfg).get(key)!r}")
            splits = json.loads(self.state["splits"])
            preprocessing = json.loads(self.state["preprocessing"])
        else:
            splits = split_patients(self.cohort.manifest, cfg.val_fraction, cfg.seed, cfg.stratify)
            preprocessing = None
        self.splits = splits
        self._print_notes(split_notes(self.cohort.manifest, splits, cfg.stratify))
        modalities = cfg.modalities or self.cohort.modalities
        if self.state is not None:
            modalities = cfg.modalities or saved_modalities(self.state) or modalities  # a resume keeps its modalities
            try:
                check_resume(self.state, self.cohort, modalities, str(self._ckpt_dir()))
            except ResumeMismatch as e:
                raise TrainingError(str(e)) from None
        rna_fm_cfg = None
        if cfg.rna_fm and "rna" in modalities:
            from ..models.rna_fm import RNAFoundationModel

            fm, fm_prep = RNAFoundationModel.load(cfg.rna_fm)
            self._warn_fm_leak(cfg.rna_fm, splits["val"])
            preprocessing = dict(preprocessing or {})
            preprocessing.setdefault("rna", fm_prep)
            rna_fm_cfg = asdict(fm.config)
        rna_emb = None
        if cfg.rna_embeddings:
            from ..cohort.readers import read_table

            table = read_table(cfg.rna_embeddings)
            rna_emb = table.set_index(table.columns[0])
        cache = None if cfg.feature_cache_mb is None else int(cfg.feature_cache_mb * 2**20)
        # training-time missingness (train_missing_rate): these patients' data are never read, not by the
        # preprocessing fit, not by a batch; validation patients keep theirs
        self.hidden = hidden_in_training(self.cohort.manifest, splits["train"], modalities, cfg.train_missing_rate,
                                         cfg.seed)
        self._check_hidden(splits["train"])
        self.data = CohortData(self.cohort, cfg.features, modalities, splits["train"], preprocessing,
                               cfg.transform_options, rna_emb, feature_cache_bytes=cache, hidden=self.hidden,
                               transforms=MODEL_TRANSFORMS)
        overrides = dict(cfg.model_overrides, wsi_level=cfg.wsi_level)
        if rna_fm_cfg is not None:
            overrides.update(rna_encoder="frozen_fm", rna_fm=rna_fm_cfg)
        if cfg.slide_encoder_weights and "wsi" in modalities:
            published = self._published_slide_encoder(cfg.slide_encoder_weights, self.data.input_dims["wsi"])
            overrides["slide_encoder"] = {k: v for k, v in asdict(published.config).items() if k != "input_dim"}
        self.model_config = PathAlignConfig.from_preset(cfg.preset, modalities, self.data.input_dims, **overrides)
        torch.manual_seed(cfg.seed)
        patch_encoder = None
        if "wsi" in modalities:
            patch_encoder = {"name": _features_encoder(self.data), "feature_dim": self.data.input_dims["wsi"],
                             **features_scale(self.data.features_contracts)}
        self.model = PathAlignModel(self.model_config, self.data.preprocessing, patch_encoder,
                                    self._training_info()).to(self.device)
        if cfg.slide_encoder_weights and "wsi" in modalities and self.state is None:
            self.model.slide_encoder.load_state_dict(published.state_dict())
        if rna_fm_cfg is not None and self.state is None:
            self.model.encoders["rna"].foundation.load_state_dict(fm.state_dict())
        if self.model.slide_encoder is not None:
            self.model.slide_encoder.checkpoint_activations = cfg.checkpoint_activations
        seed_rank_stream(cfg.seed, self.rank)  # same initial weights on every rank, then a stream of its own
        self.loss_fn = MultimodalSigLIPLoss(self.model_config.balance, self.rank, self.world)
        self.opt = torch.optim.AdamW(param_groups(self.model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.98))
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lr_lambda(cfg.warmup_steps, cfg.steps))
        self.start_step = 0
        if self.state is not None:
            self.model.load_state_dict(upgrade_state_dict(self.state["model"]))
            self.opt.load_state_dict(self.state["optimizer"])
            self.sched.load_state_dict(self.state["scheduler"])
            restore_from_checkpoint(self.state, cfg.seed, self.rank, self.world)  # each rank its own state
            self.start_step = int(self.state["step"])
        self.train_idx = self.data.eligible(splits["train"])
        if cfg.complete_cases:
            self.train_idx = self.train_idx[self.data.n_valid[self.train_idx] == len(self.data.modalities)]
        spec = BatchSpec(cfg.seed, cfg.batch_size, cfg.max_tokens, cfg.modality_dropout, self.rank, self.world,
                         cfg.wsi_level)
        self.batches = StepBatches(self.data, self.train_idx, spec)
        self.validation = Validation.for_trainer(self)
        self.net = self.model
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            self.net = DDP(self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                           find_unused_parameters=True)

    def _print_notes(self, notes: list[str]) -> None:
        """One-line notes on stderr (rank 0 only)."""
        import sys

        for line in notes if self.rank == 0 else []:
            print(f"pathalign: {line}", file=sys.stderr, flush=True)

    def _warn_fm_leak(self, fm_dir: str, val_ids: list[str]) -> None:
        """Warn when the RNA foundation model was fitted on some of this run's validation patients."""
        from .rna_pretrain import val_patients_seen

        seen = val_patients_seen(fm_dir, val_ids)
        if seen:
            self._print_notes([f"warning: the RNA foundation model {fm_dir} was fitted on {len(seen)} of this run's "
                               f"{len(val_ids)} validation patients (e.g. {', '.join(seen[:3])}): held-out figures "
                               f"are optimistic; pretrain it with this run's --seed (pathalign pretrain-rna)"])

    def _check_hidden(self, train_ids: list[str]) -> None:
        """A modality that hiding leaves with fewer than 2 training patients cannot be fitted or aligned."""
        man = self.cohort.manifest
        train = man.case_id.isin(set(train_ids))
        for m, ids in self.hidden.items():
            n = int((train & man[f"has_{m}"]).sum())
            if n and n - len(ids) < 2:
                raise TrainingError(f"--train-missing-rate {self.cfg.train_missing_rate:g} hides {m} for {len(ids)} of "
                                    f"its {n} training patients, leaving {n - len(ids)}: at least 2 must keep it "
                                    f"(lower the rate, or leave {m} out with --modalities)")

    def _training_info(self) -> dict:
        """What the exported model records about its training (config, splits, data summary)."""
        d = self.data
        train = set(self.splits["train"])
        data = {"cohort": str(self.cohort.path), "patients": len(d.ids),
                "patients_train": len(train), "patients_val": len(self.splits["val"])}
        for m in d.modalities:
            data[f"patients_with_{m}"] = int(d.valid[m].sum())
        if self.hidden:
            data["hidden_in_training"] = {m: len(ids) for m, ids in self.hidden.items()}
        return {"config": asdict(self.cfg), "splits": self.splits, "data": data}

    @staticmethod
    def _published_slide_encoder(path: str, feature_dim: int):
        from ..models import SlideEncoder

        enc = SlideEncoder.from_exaone_path(path)
        if enc.config.input_dim != feature_dim:
            raise TrainingError(f"{path}: the published slide encoder expects {enc.config.input_dim}-dim patch features, "
                                f"but the cohort's features have {feature_dim} dims; extract features with the matching "
                                f"patch encoder (e.g. --encoder exaone-path-2.5) or train the slide encoder from scratch")
        return enc

    # ------------------------------------------------------------------ checkpoints
    def _ckpt_dir(self) -> Path:
        return self.run / "checkpoints"

    def _latest_checkpoint(self):
        path = latest_checkpoint(self._ckpt_dir())
        if path is None:
            raise TrainingError(f"--resume: no checkpoint in {self._ckpt_dir()}")
        try:
            return read_checkpoint(path)
        except CheckpointError as e:
            raise TrainingError(str(e)) from None

    def save_checkpoint(self, step: int) -> Path:
        """Write the full training state after ``step`` steps, atomically.

        Called on every rank: each hands its random states to rank 0 (a collective under DDP), which writes.
        """
        rng = gather_states(self.rank, self.world, self.device)
        d = self._ckpt_dir()
        if self.rank != 0:
            return d / checkpoint_name(step)
        state = {"model": self.model.state_dict(), "optimizer": self.opt.state_dict(),
                 "scheduler": self.sched.state_dict(), "step": step, "rng_torch": rng[0]["cpu"], "rng_states": rng,
                 "sampler": {"step": step, "steps_per_epoch": self.batches.steps_per_epoch},
                 "train_config": json.dumps(asdict(self.cfg)), "model_config": json.dumps(asdict(self.model_config)),
                 "preprocessing": json.dumps(self.data.preprocessing), "splits": json.dumps(self.splits),
                 **run_identity(self.cohort.meta, self.data.modalities, self.data.preprocessing)}
        if self.validation is not None:  # the best-so-far step, its score and weights
            state.update(self.validation.selector.state_dict())
        return write_checkpoint(d, step, state, self.cfg.keep_checkpoints)

    # ------------------------------------------------------------------ training
    def _loader(self):
        stopped = self.validation is not None and self.validation.should_stop  # a resumed run that stopped early
        steps = range(self.start_step, self.start_step if stopped else self.cfg.steps)
        # a private generator: creating the loader must not draw from the global RNG that dropout uses,
        # or a resumed run would diverge from an uninterrupted one
        gen = torch.Generator().manual_seed(self.cfg.seed)
        self.data.reader.share(max(1, self.cfg.workers))
        return DataLoader(self.batches, sampler=list(steps), batch_size=None, num_workers=self.cfg.workers,
                          collate_fn=_identity, prefetch_factor=4 if self.cfg.workers else None,
                          persistent_workers=False, generator=gen, worker_init_fn=worker_init())

    def fit(self) -> dict:
        """Train to ``cfg.steps``; returns final metrics. Raises :class:`TrainingError` on a non-finite loss."""
        cfg, log = self.cfg, None
        is_main = self.rank == 0
        writer = None
        if is_main:
            log = self._open_log()
            try:
                from torch.utils.tensorboard import SummaryWriter

                writer = SummaryWriter(str(self.run / "tb"), purge_step=self.start_step + 1)
            except ImportError:
                writer = None
        diag = self._diagnostics() if is_main else None
        amp = self.device.type == "cuda"
        bar = tqdm(total=cfg.steps, initial=self.start_step, desc="train", disable=not (cfg.progress and is_main))
        self.net.train()
        wait_total = step_total = 0.0
        t_last = time.perf_counter()
        step = self.start_step
        for batch in self._loader():
            t_data = time.perf_counter()
            wait = t_data - t_last
            if cfg.micro_batch:  # gradient caching: forward and backward in micro-batches
                self.opt.zero_grad(set_to_none=True)
                out = self._gradcache_backward(self._to_device(batch), amp)
                self.check_finite(out.loss, step + 1, batch)
            else:
                out = self.forward_backward(self._to_device(batch), step + 1)
            loss, per_pair = out.loss, out.values  # NaN for a pair with nothing valid; read with the log row
            gnorm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
            self.opt.step()
            self.sched.step()
            step += 1
            t_last = time.perf_counter()
            wait_total += wait
            step_total += t_last - t_data + wait
            t_val = time.perf_counter()
            val = self.validation.maybe_score(step, self.model) if self.validation is not None else {}
            t_last += time.perf_counter() - t_val  # validation is neither data wait nor step time
            stop = self.validation is not None and self.validation.should_stop
            if is_main:
                row = {**self._log_row(step, loss, per_pair, gnorm, wait, t_last - t_data + wait), **val}
                log.writerow(row)
                if writer is not None:
                    for k, v in row.items():
                        if k != "step":
                            writer.add_scalar(k.replace("loss_", "loss/").replace("t_", "temperature/").replace("b_", "bias/"), v, step)
                bar.set_postfix(loss=f"{row['loss']:.3f}", steps_s=f"{1 / max(1e-9, row['step_seconds']):.1f}")
                bar.update(1)
                if step % cfg.checkpoint_every == 0 or step == cfg.steps or stop:
                    self._log_fh.flush()
            if step % cfg.checkpoint_every == 0 or step == cfg.steps or stop:  # an early stop is checkpointed too
                self.save_checkpoint(step)  # on every rank: each one's random state goes into the checkpoint
            if is_main:
                if diag is not None:
                    diag.maybe_log(step, self.model, step == cfg.steps or stop, writer)
            if stop:
                self._print_notes([f"early stopping at step {step}: {cfg.early_stopping_patience} validations "
                                   f"without improvement since step {self.validation.best_step}"])
                break
        bar.close()
        metrics = {"steps": step, "data_wait_fraction": wait_total / max(step_total, 1e-9)}
        if is_main:
            self._log_fh.close()
            if writer is not None:
                writer.close()
            if diag is not None:
                metrics["diagnostics"] = diag.finish()
            self.export(step)
            metrics["selection"] = self.model.training_info["selection"]
            from .plots import plot_loss_curves

            plot_loss_curves(self.run / "log.csv", self.run / "loss_curves.png", metrics["selection"]["step"])
            atomic_write_json(metrics, self.run / "train_metrics.json")
        return metrics

    def _diagnostics(self):
        """The diagnostics log on a fixed batch of validation patients (None when off or too few of them)."""
        from .diagnostics import DiagnosticsLog

        val_idx = self.data.eligible(self.splits.get("val", []))
        if self.cfg.diagnostics_every <= 0 or len(val_idx) < 2:
            return None
        spec = BatchSpec(self.cfg.seed, min(len(val_idx), 128), self.cfg.max_tokens, 0.0, wsi_level=self.cfg.wsi_level)
        batch = self._to_device(StepBatches(self.data, val_idx, spec)[0])
        return DiagnosticsLog(self.run, batch, self.cfg.diagnostics_every, self.model.config.balance, self.start_step)
    def autocast(self) -> torch.autocast:
        """bf16 autocast on CUDA, nothing on the CPU (fp32)."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda")

    def compute_loss(self, batch: dict) -> LossOutput:
        """One step's forward: embed the batch, project it into the pair spaces, the loss (no backward).

        The pieces, for a caller that runs them apart (gradient caching): ``self.net(batch, project=False)``
        -> ``(embeddings, valid)``; ``self.net(embeddings=..., valid=...)`` -> pair projections;
        ``self.loss_fn(pairs)`` -> :class:`LossOutput`.
        """
        return self.loss_fn(self.net(batch))

    def _gradcache_backward(self, batch: dict, amp: bool) -> LossOutput:
        """One step's loss and parameter gradients by gradient caching (``cfg.micro_batch`` rows at a time).

        Runs outside DDP's hooks: the gradients are averaged over ranks here, as DDP would.
        """
        from .gradcache import allreduce_gradients, gradcache_step, plan_micro_batches, row_tokens, slice_batch

        cfg, model = self.cfg, self.model
        n_prefix = model.slide_encoder.config.n_prefix if model.slide_encoder is not None else 0
        plan = plan_micro_batches(row_tokens(batch, n_prefix), cfg.micro_batch, cfg.micro_batch_tokens)

        def embed(mb: dict) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=amp):
                return model(mb, project=False)

        def loss_from_embeddings(emb: dict[str, Tensor], valid: dict[str, Tensor]) -> LossOutput:
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=amp):
                return self.loss_fn(model(embeddings=emb, valid=valid))

        out = gradcache_step(embed, loss_from_embeddings, [slice_batch(batch, a, b) for a, b in plan], self.device)
        allreduce_gradients(model.parameters(), self.world)
        return out

    def forward_backward(self, batch: dict, step: int) -> LossOutput:
        """The loss of step ``step`` (1-based) with its gradients in ``.grad`` (set, not accumulated).

        Raises:
            TrainingError: the loss is not finite (names the step, the patients and the last checkpoint).
        """
        with self.autocast():
            out = self.compute_loss(batch)
        self.check_finite(out.loss, step, batch)
        self.opt.zero_grad(set_to_none=True)
        out.loss.backward()
        return out

    def check_finite(self, loss: Tensor, step: int, batch: dict) -> None:
        """Stop on a non-finite loss with the step, the batch's patients and the last good checkpoint."""
        if not torch.isfinite(loss):
            raise TrainingError(f"non-finite loss ({float(loss)}) at step {step}; batch patients: "
                                f"{', '.join(batch['patients'])}; last good checkpoint: "
                                f"{self._ckpt_dir() / 'latest.txt'}")

    def _to_device(self, batch: dict) -> dict:
        """The batch's tensors on the device, copied without waiting; the slides stay on the host.

        The slide encoder validates and packs the slides on the host (segment lengths are host numbers)
        and then moves the packed batch in one go, so no slide tensor goes to the device and back.
        """
        if self.device.type == "cpu":
            return batch
        out = dict(batch)
        for m in self.data.arrays:
            out[m] = batch[m].to(self.device, non_blocking=True)
        return out

    def _log_row(self, step, loss, per_pair, gnorm, wait, seconds) -> dict:
        """The step's log row; its tensors are read from the device together, in one host read."""
        names, values = ["loss", "grad_norm"], [loss.detach(), torch.as_tensor(gnorm)]
        for a, b in self.model.pair_heads.pairs:
            key = f"{a}-{b}"
            t, bias = self.model.pair_heads.temperature_bias(a, b)
            names += [f"loss_{key}", f"t_{key}", f"b_{key}"]
            values += [per_pair[key].detach() if key in per_pair else torch.full((), float("nan"), device=loss.device),
                       t.detach().exp(),
                       bias.detach()]
        read = dict(zip(names, torch.stack([v.float().reshape(()).to(loss.device) for v in values]).tolist()))
        row = {"step": step, "loss": read["loss"], "lr": self.sched.get_last_lr()[0], "grad_norm": read["grad_norm"],
               "data_wait": wait, "step_seconds": seconds}
        for a, b in self.model.pair_heads.pairs:
            key = f"{a}-{b}"
            row.update({f"loss_{key}": read[f"loss_{key}"], f"t_{key}": read[f"t_{key}"], f"b_{key}": read[f"b_{key}"]})
        return row

    def _open_log(self):
        """``log.csv`` opened for appending; on resume, rows after the checkpoint are dropped first.

        Rows already logged are never held only in memory: the trimmed file replaces the old one
        atomically before anything is appended, so a kill at any moment keeps every row up to the
        checkpoint (and, after a flush, the newer ones).
        """
        path = self.run / "log.csv"
        fields = list(self._log_row(0, torch.tensor(0.0), {}, torch.tensor(0.0), 0.0, 1.0).keys())
        fields += validation_columns(self.model.pair_heads.pairs)
        kept = []
        if path.is_file() and self.start_step > 0:  # drop rows logged after the checkpoint we resume from
            with open(path, newline="") as fh:
                kept = [r for r in csv.DictReader(fh) if int(r["step"]) <= self.start_step]
        with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore")
            w.writeheader()
            w.writerows(kept)
        self._log_fh = open(path, "a", newline="")
        return csv.DictWriter(self._log_fh, fieldnames=fields)

    def export(self, final_step: int | None = None) -> Path:
        """Write ``RUN/model`` (the validation-selected weights) and ``RUN/model-last`` (the final step's).

        Each is a ``model.save_pretrained`` folder (safetensors + config.json + model card); their
        ``training.selection`` says which step they hold and why (see :mod:`.validation`).
        """
        return export_models(self.model, self.run, self.validation,
                             self.cfg.steps if final_step is None else final_step)
