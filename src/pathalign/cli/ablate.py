"""``pathalign ablate``: options → :func:`pathalign.evaluate.ablate.run_ablations`; the arms, the seeds and
the table: :mod:`pathalign.evaluate.ablate` (its docstring is this verb's ``--help``).
"""
from __future__ import annotations

import argparse

from .options import (
    LIST_SYNTAX,
    ListOption,
    device_option,
    include,
    include_exclusive,
    out_option,
    seed_option,
    seeds_option,
)

#: the library module whose docstring is ``--help``'s description
DOC_FROM = "pathalign.evaluate.ablate"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cohort", required=True, help="cohort folder with slide features")
    include(p, out_option("folder for the runs and the table"))
    p.add_argument("--preset", default="tiny",
                   help="model preset of every arm: tiny, small, molecular, exaone-path-2.5, or auto (chosen once "
                        "from the cohort as train --preset auto chooses, the same for every arm)")
    p.add_argument("--steps", type=int, default=300, help="training steps per arm and seed (default 300)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="patients per batch (default: the preset's, 32 for tiny); an arm with fewer training "
                        "patients uses them all, with a note")
    p.add_argument("--max-tokens", type=int, default=None, help="patches per slide per step (default: the preset's)")
    # one seed or several, not both: a --seed beside --seeds would otherwise be silently ignored
    include_exclusive(p, seed_option("the one seed of every arm (default: 0); or --seeds", default=None),
                      seeds_option("--seeds", None, f"seeds ({LIST_SYNTAX} integers, e.g. 0,1,2): every arm runs once "
                                                    "per seed; the table gives mean ± 95 %% CI and the paired "
                                                    "difference to full"))
    p.add_argument("--folds", type=int, default=5, help="folds of the benchmark tasks")
    p.add_argument("--rna-fm", default=None, help="pretrained RNA foundation model folder")
    p.add_argument("--only", action=ListOption, default=None, metavar="ARM",
                   help=f"arm names ({LIST_SYNTAX}; full is always run); see the list above")
    include(p, device_option())


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..devices import resolve_device
    from ..evaluate.ablate import run_ablations
    from ..models.presets import resolve_preset

    device = str(resolve_device(args.device))  # before any work
    preset = resolve_preset(args.preset, args.cohort, None, report=print)  # one preset for every arm
    seed = 0 if args.seed is None else args.seed
    seeds = list(args.seeds) if args.seeds else [seed]
    only = list(args.only) if args.only else None
    run_ablations(args.cohort, args.out, preset, args.steps, seed, args.rna_fm, only=only, seeds=seeds,
                  batch_size=args.batch_size, max_tokens=args.max_tokens, folds=args.folds,
                  device=device)
    print((Path(args.out) / "ablation.md").read_text())
    return 0
