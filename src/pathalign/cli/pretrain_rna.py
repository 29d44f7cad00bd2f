"""``pathalign pretrain-rna``: options → :func:`pathalign.train.rna_pretrain.pretrain_rna`; what it fits
and on which patients: :mod:`pathalign.train.rna_pretrain` (its docstring is this verb's ``--help``).
"""
from __future__ import annotations

import argparse

from .options import device_option, include, out_option, seed_option

#: the library module whose docstring is ``--help``'s description
DOC_FROM = "pathalign.train.rna_pretrain"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cohort", required=True, help="cohort folder (pathalign cohort build)")
    include(p, out_option("folder for the pretrained model"))
    p.add_argument("--genes", type=int, default=2000, help="top-variance genes modelled (default 2000)")
    p.add_argument("--dim", type=int, default=128, help="embedding dim (small cohorts: 32-64)")
    p.add_argument("--depth", type=int, default=1, help="residual SwiGLU blocks")
    p.add_argument("--steps", type=int, default=2000, help="training steps")
    p.add_argument("--batch-size", type=int, default=64, help="RNA samples per step")
    p.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate")
    p.add_argument("--mask-ratio", type=float, default=0.3, help="fraction of genes hidden per sample")
    include(p, seed_option("training seed, and the seed of the train/val split: give the --seed 'pathalign train' will "
                            "use, so the foundation model never sees the trainer's validation patients"))
    p.add_argument("--val-fraction", type=float, default=None,
                   help="the trainer's val_fraction (default: TrainConfig's, 0.2); its val patients are left out")
    p.add_argument("--stratify", default=None,
                   help="the trainer's stratify column (default: TrainConfig's, cancer_type; 'none': unstratified)")
    include(p, device_option())


def run(args: argparse.Namespace) -> int:
    from ..devices import resolve_device
    from ..train.rna_pretrain import pretrain_rna

    pretrain_rna(args.cohort, args.out, n_genes=args.genes, dim=args.dim, depth=args.depth, steps=args.steps,
                 batch_size=args.batch_size, lr=args.lr, mask_ratio=args.mask_ratio, seed=args.seed,
                 device=resolve_device(args.device), val_fraction=args.val_fraction,
                 stratify=None if args.stratify is None else ("" if args.stratify.lower() == "none" else args.stratify))
    return 0
