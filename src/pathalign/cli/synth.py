"""``pathalign synth``: options → :func:`pathalign.synth.generate_cohort`; what it writes: :mod:`pathalign.synth`
(its docstring is this verb's ``--help``).
"""
from __future__ import annotations

import argparse

from .options import include, out_option, seed_option

#: the library module whose docstring is ``--help``'s description
DOC_FROM = "pathalign.synth"


def add_arguments(p: argparse.ArgumentParser) -> None:
    include(p, out_option("output folder"))
    p.add_argument("--patients", type=int, default=200, help="number of patients (default 200)")
    include(p, seed_option("random seed (the cohort is deterministic for a seed)"))
    p.add_argument("--slide-size", type=int, default=2048, help="slide side in level-0 px (default 2048)")
    p.add_argument("--mpp", type=float, default=0.5, help="µm per level-0 px (default 0.5 = 20x)")
    p.add_argument("--genes", type=int, default=1000, help="RNA genes")
    p.add_argument("--difficulty", type=float, default=1.0,
                   help="multiplies every noise level and weakens the slide cues (default 1.0; 0.5 easier, 2 harder); "
                        "see truth.md in the output for what it scales")
    p.add_argument("--workers", type=int, default=None, help="processes rendering slides (default: all cores)")
    p.add_argument("--paired-trait", action="store_true",
                   help="two slides per patient, each with a cue of its own, and a clinical label paired_trait (do the "
                        "two cues differ?) that only reading both slides together tells; RNA carries it (see truth.md)")


def run(args: argparse.Namespace) -> int:
    from ..synth import SynthConfig, generate_cohort

    cfg = SynthConfig(patients=args.patients, seed=args.seed, slide_size=args.slide_size, mpp=args.mpp, genes=args.genes,
                      difficulty=args.difficulty, paired_trait=args.paired_trait)
    generate_cohort(args.out, cfg, workers=args.workers)
    return 0
