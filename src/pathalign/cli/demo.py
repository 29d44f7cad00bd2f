"""``pathalign demo``: the whole life cycle on the embedded synthetic cohort.

synth → preprocess (built-in patch encoder) → cohort build → pretrain-rna → train (tiny preset)
→ embed → bench against mean pooling, with a Markdown report and plots in ``--out``
(default ``demo_output/``). Every stage leaves a marker when it finishes, so re-running reuses
finished stages; ``--fresh`` starts over.
"""
from __future__ import annotations

import argparse

from .options import device_option, include, out_option, seed_option


def add_arguments(p: argparse.ArgumentParser) -> None:
    include(p, out_option("output folder (default demo_output/)", required=False, default="demo_output"))
    p.add_argument("--patients", type=int, default=200, help="patients in the synthetic cohort")
    p.add_argument("--slide-size", type=int, default=2048, help="side of each synthetic slide in level-0 px")
    p.add_argument("--patch-size", type=int, default=128, help="patch side at 20x (128 keeps the demo fast)")
    p.add_argument("--genes", type=int, default=1000, help="genes in the synthetic RNA table")
    p.add_argument("--steps", type=int, default=300, help="training steps")
    include(p, seed_option("seed of the cohort and of the training"))
    p.add_argument("--ablations", action="store_true", help="also train and bench the ablations (slower)")
    p.add_argument("--fresh", action="store_true", help="start over instead of reusing finished stages")
    include(p, device_option())


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..demo import DemoConfig, run_demo
    from ..devices import resolve_device

    cfg = DemoConfig(out=Path(args.out), patients=args.patients, slide_size=args.slide_size, patch_size=args.patch_size,
                     genes=args.genes, steps=args.steps, seed=args.seed, ablations=args.ablations,
                     device=str(resolve_device(args.device)))
    run_demo(cfg, fresh=args.fresh)
    return 0
