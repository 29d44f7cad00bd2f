"""Train the alignment on a cohort. Under ``torchrun --nproc_per_node=K -m pathalign train ...`` it
runs DDP (NCCL on GPU, gloo on CPU), multi-node with the usual torchrun flags; rank 0 alone writes
logs and checkpoints. Settings come from the preset's ``train`` section, then ``--config`` (YAML,
keys = TrainConfig fields, ``model:`` = architecture overrides), then the flags below.
"""
from __future__ import annotations

import argparse

from ..devices import DEVICE_HELP
from .options import LIST_SYNTAX, ListOption, device_option, include, out_option, quiet_option, seed_option


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cohort", required=True, help="cohort folder (pathalign cohort build)")
    include(p, out_option("run folder (checkpoints, logs, model export)"))
    p.add_argument("--preset", default="auto",
                   help="model preset: tiny, small, molecular, exaone-path-2.5, or auto (default): molecular for a "
                        "cohort without slides with at least 200 trainable patients, else tiny")
    p.add_argument("--config", default=None, help="YAML with TrainConfig fields (and a 'model:' section)")
    p.add_argument("--steps", type=int, default=None, help="training steps (default: the preset's)")
    p.add_argument("--batch-size", type=int, default=None, help="global batch (patients per step; default: the preset's, 32 for tiny)")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (default: the preset's)")
    p.add_argument("--max-tokens", type=int, default=None,
                   help="patches per slide per step (random subset); with --wsi-level patient, per patient: its slides "
                        "share them in proportion to their patches (default: the preset's, 512 for tiny)")
    p.add_argument("--wsi-level", default=None, choices=["slide", "patient"],
                   help="slide (default): one slide per patient per step, a patient's slide embeddings averaged at "
                        "inference; patient: all of a patient's slides packed as one sequence (RoPE within each "
                        "slide's fragments, global blocks over all of them), recorded in the model's config")
    p.add_argument("--modality-dropout", type=float, default=None,
                   help="probability of hiding each available modality of a patient in a step (default: the preset's)")
    p.add_argument("--train-missing-rate", type=float, default=None,
                   help="hide this fraction (0-1) of the training patients' molecular data, per modality, seeded "
                        "and patient-level: how the method fares with more missing data (validation patients keep theirs)")
    p.add_argument("--checkpoint-every", type=int, default=None,
                   help="steps between checkpoints in RUN/checkpoints (default: the preset's)")
    p.add_argument("--modalities", action=ListOption, default=None, metavar="MODALITY",
                   help=f"subset of wsi,rna,snp,cnv,methylation ({LIST_SYNTAX}; default: the cohort's, or on --resume "
                        "the run's)")
    p.add_argument("--features", default=None, help="patch-features folder (default: the cohort's)")
    p.add_argument("--rna-fm", default=None, help="pretrained RNA foundation model folder (pathalign pretrain-rna)")
    p.add_argument("--rna-embeddings", default=None, help="table of precomputed RNA embeddings (rows = patients)")
    p.add_argument("--slide-encoder-weights", default=None,
                   help="start the slide encoder from the published EXAONE Path 2.5 checkpoint")
    include(p, device_option(None, f"{DEVICE_HELP}; default: the --config's device, else auto"))
    p.add_argument("--workers", type=int, default=None, help="data-loading processes (default: 0, batches loaded in the training process)")
    include(p, seed_option("seed of the split, the initialisation and the batches (default: 0)", default=None))
    p.add_argument("--micro-batch", type=int, default=None,
                   help="gradient caching: encode the global batch this many patients at a time, with the full-batch "
                        "gradients (the contrastive batch is then not bound by accelerator memory)")
    p.add_argument("--micro-batch-tokens", type=int, default=None,
                   help="with --micro-batch: also cap the slide tokens per micro-batch (long and short slides pack evenly)")
    p.add_argument("--checkpoint-activations", action="store_true",
                   help="recompute slide-encoder blocks in the backward pass (less memory, ~1 extra forward)")
    p.add_argument("--feature-cache-mb", type=float, default=None,
                   help="slide-feature cache of all loader processes together, MiB (default 5%% of RAM, at most 4 GiB)")
    p.add_argument("--diagnostics-every", type=int, default=None,
                   help="every N steps, effective rank / mean cosine per modality and loss / gradient share per pair "
                        "on a fixed validation batch (diagnostics.csv, TensorBoard, diagnostics.md; warnings on "
                        "collapse or a dominating pair); default 50, 0 turns it off")
    p.add_argument("--val-every", type=int, default=None,
                   help="score the validation patients every N steps (val/loss and held-out cross-modal val/recall@5 "
                        "in log.csv, TensorBoard and loss_curves.png); default min(checkpoint_every, max(10, steps/20)), "
                        "0 turns validation off")
    p.add_argument("--select-metric", default=None, choices=["recall@5", "loss", "last"],
                   help="which step RUN/model exports: recall@5 (default; the highest validation recall@5, mean over "
                        "the pairs with >= 10 validation patients; ties to the lower val loss; falls back to loss when "
                        "no pair has enough), loss (the lowest validation loss) or last (the final step). "
                        "RUN/model-last always holds the final step")
    p.add_argument("--early-stopping-patience", type=int, default=None,
                   help="stop after K validations in a row without improvement of the selection metric (default 0: off)")
    p.add_argument("--stratify", default=None,
                   help="manifest column the train/val split is stratified on (default cancer_type; 'none': "
                        "unstratified); a column the cohort lacks is said, and the split is then unstratified")
    p.add_argument("--resume", action="store_true", help="continue from the run folder's latest checkpoint")
    include(p, quiet_option("no progress bar or per-step lines"))


def run(args: argparse.Namespace) -> int:
    import os
    from pathlib import Path

    from ..io.model_folder import ConfigError
    from ..models.presets import resolve_preset
    from ..train.trainer import TrainConfig, Trainer

    overrides = _read_yaml(args.config) if args.config else {}
    if "model" in overrides:
        overrides["model_overrides"] = overrides.pop("model")
    flags = dict(steps=args.steps, batch_size=args.batch_size, lr=args.lr, max_tokens=args.max_tokens,
                 wsi_level=args.wsi_level,
                 modality_dropout=args.modality_dropout, checkpoint_every=args.checkpoint_every,
                 features=args.features, rna_fm=args.rna_fm, slide_encoder_weights=args.slide_encoder_weights,
                 rna_embeddings=args.rna_embeddings, device=args.device, workers=args.workers, seed=args.seed,
                 micro_batch=args.micro_batch, micro_batch_tokens=args.micro_batch_tokens,
                 feature_cache_mb=args.feature_cache_mb, checkpoint_activations=args.checkpoint_activations or None,
                 diagnostics_every=args.diagnostics_every, train_missing_rate=args.train_missing_rate,
                 val_every=args.val_every, select_metric=args.select_metric,
                 early_stopping_patience=args.early_stopping_patience,
                 stratify=None if args.stratify is None else ("" if args.stratify.lower() == "none" else args.stratify),
                 modalities=args.modalities or None)
    overrides.update({k: v for k, v in flags.items() if v is not None})
    overrides["device"] = str(overrides.get("device", "auto"))  # resolved per process by setup_distributed
    overrides["progress"] = not args.quiet
    preset = resolve_preset(args.preset, args.cohort, overrides.get("modalities"), report=print)
    try:
        cfg = TrainConfig.from_preset(preset, **overrides)
    except (ValueError, KeyError, TypeError) as e:
        where = f"{args.config} / flags" if args.config else "train settings"
        raise ConfigError(f"{where}: {e.args[0] if isinstance(e, KeyError) and e.args else e}") from None
    from ..distributed import teardown_distributed

    metrics = Trainer(args.cohort, args.out, cfg, resume=args.resume).fit()
    # every rank leaves together after a finished run (after an error torchrun ends the others: no barrier
    # that a rank stuck in another collective would never reach)
    teardown_distributed()
    if int(os.environ.get("RANK", 0)) != 0:
        return 0
    sel = metrics["selection"]
    chosen = (f"step {sel['step']}, {sel['metric']} {sel['value']:.4g}" if sel.get("value") is not None
              else f"step {sel['step']}, the final one")
    print(f"trained {metrics['steps']} steps; data wait {metrics['data_wait_fraction']:.1%} of step time; "
          f"model exported to {Path(args.out) / 'model'} ({chosen}); final step in {Path(args.out) / 'model-last'}")
    return 0


def _read_yaml(path: str) -> dict:
    """The ``--config`` YAML as a dict; a clear error naming the file when it is not one."""
    import yaml

    from ..io.model_folder import ConfigError

    try:
        data = yaml.safe_load(open(path).read()) or {}
    except OSError as e:
        raise ConfigError(f"{path}: cannot read ({e.strerror or e})") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of TrainConfig fields, got {type(data).__name__}")
    return data
