"""``pathalign bench``: options → :func:`pathalign.evaluate.bench.run_bench`; what it computes:
:mod:`pathalign.evaluate.bench` (its docstring is this verb's ``--help``).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .options import LIST_SYNTAX, ListOption, include, out_option, seed_option, seeds_option

#: the library module whose docstring is ``--help``'s description
DOC_FROM = "pathalign.evaluate.bench"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..evaluate.baselines import PCA_COMPONENTS
    from ..evaluate.probes import DEFAULT_ALPHA, RECIPES
    from ..evaluate.representations import MODALITY_CHOICES

    p.add_argument("--embeddings", action=ListOption, required=True, metavar="[NAME=]PATH",
                   help=f"embeddings.h5 files ({LIST_SYNTAX}), optionally NAME=PATH (default name: the file stem; "
                        "several = compared in one table: the model, baselines, ablations)")
    p.add_argument("--tasks", help="Patho-Bench split folder (TSV + YAML per task: task_col, sample_col, "
                                   "task_type, metrics; survival columns <task_col>_days/<task_col>_event)")
    p.add_argument("--cohort", help="cohort folder: without --tasks, tasks are derived from its clinical labels; "
                                    "with or without, its matrices give the raw/PCA/CCA baselines and its id rule "
                                    "the matching of split ids")
    p.add_argument("--modality", action=ListOption, default=["all"], metavar="REPRESENTATION",
                   help=f"representations to score ({LIST_SYNTAX}): " + ", ".join(MODALITY_CHOICES) +
                        " or all (default: every modality the embeddings hold, plus fused = the concatenated "
                        "standardised per-modality embeddings of a patient)")
    p.add_argument("--no-baselines", action="store_true",
                   help="skip the baselines scored by default with --cohort (raw:<m> and pca:<m> on every task, "
                        "cca:<a>-<b> beside every cross-modal pair)")
    p.add_argument("--pca-components", type=int, default=PCA_COMPONENTS,
                   help=f"components of the PCA baseline and of the CCA's inputs (default {PCA_COMPONENTS}; "
                        "fewer when a training fold has fewer patients)")
    p.add_argument("--cca-components", type=int, default=None,
                   help="components of the CCA baseline (default: chosen by recall@5 on a fifth of the training "
                        "patients, never on the test ones)")
    p.add_argument("--compare", action=ListOption, default=None, metavar="[NAME=]PATH",
                   help="deprecated: give every embeddings file to --embeddings (these are appended to them, "
                        "with a warning)")
    p.add_argument("--recipe", choices=RECIPES, default="pathalign",
                   help="probe recipe: 'pathalign' (standardised features, balanced weights, C and Cox penalty "
                        "picked on the validation part) or 'patho-bench' (Patho-Bench's own: raw features, "
                        "LogisticRegression C=1, Coxnet alpha=0.07, l1_ratio=0.5; comparable with its tables)")
    p.add_argument("--cost", type=float, default=1.0, help="C of the patho-bench recipe's logistic regression")
    p.add_argument("--balanced", action="store_true", help="balanced class weights in the patho-bench recipe")
    p.add_argument("--cox-alpha", type=float, default=DEFAULT_ALPHA, help="Cox penalty of the patho-bench recipe")
    p.add_argument("--allow-missing", action="store_true",
                   help="drop samples the split names but the embeddings lack (counted in the results) instead "
                        "of stopping with an error")
    p.add_argument("--folds", type=int, default=5, help="folds for cohort-derived tasks")
    p.add_argument("--labels", action=ListOption, default=None, metavar="COLUMN",
                   help=f"label columns ({LIST_SYNTAX}; default: every categorical one)")
    include(p, seed_option("seed of the cross-validation folds derived from a cohort"))
    p.add_argument("--missing-rates", action=ListOption, item=float, default=None, metavar="RATE",
                   help=f"fractions ({LIST_SYNTAX}, e.g. 0,0.25,0.5,0.75,1): also hide that fraction of each "
                        "non-slide modality at inference and report every task and cross-modal pair as a curve")
    include(p, seeds_option("--missing-seeds", [0, 1, 2], f"hiding plans per rate ({LIST_SYNTAX} integers; default "
                                                          "0,1,2): the CI is over these"))
    include(p, out_option("results folder"))


def run(args: argparse.Namespace) -> int:
    from ..cohort import load_cohort
    from ..evaluate.bench import named_embeddings, run_bench
    from ..evaluate.probes import Recipe
    from ..evaluate.representations import MODALITY_CHOICES
    from ..evaluate.tasks import TaskError, derive_tasks, load_pathobench_tasks

    if args.compare:
        print("bench: warning: --compare is deprecated and will be removed; give every embeddings file to "
              "--embeddings (--embeddings A B is what --embeddings A --compare B did)", file=sys.stderr)
    models = named_embeddings(list(args.embeddings) + list(args.compare or []))
    try:
        recipe = Recipe(args.recipe, cost=args.cost, balanced=args.balanced, alpha=args.cox_alpha)
    except ValueError as e:
        raise TaskError(f"--recipe/--cost/--cox-alpha: {e}") from None
    if not args.tasks and not args.cohort:
        raise TaskError("give --tasks (a Patho-Bench split folder) or --cohort (tasks from its labels), or both")
    mods = list(args.modality)
    bad = [m for m in mods if m not in (*MODALITY_CHOICES, "all")]
    if bad or not mods:
        raise TaskError(f"--modality: unknown {bad or args.modality!r}; choose from {', '.join(MODALITY_CHOICES)}, all")
    if args.pca_components < 1 or (args.cca_components is not None and args.cca_components < 1):
        raise TaskError("--pca-components and --cca-components must be at least 1")
    cohort = load_cohort(args.cohort) if args.cohort else None
    manifest = cohort.manifest if cohort is not None else None
    if args.tasks:
        tasks = load_pathobench_tasks(args.tasks)
    else:
        tasks = derive_tasks(manifest, args.folds, args.seed, labels=args.labels or None)
    for t in tasks:
        if t.error:
            print(f"bench: task {t.name} skipped: {t.error}", file=sys.stderr)
        for w in t.warnings:
            print(f"bench: warning: {w}", file=sys.stderr)
    if cohort is None and not args.no_baselines:
        print("bench: no --cohort: the raw/PCA/CCA baselines need its matrices and are left out", file=sys.stderr)
    rates = args.missing_rates or None
    if rates and any(not 0 <= r <= 1 for r in rates):
        raise TaskError(f"--missing-rates must lie in [0, 1], got {','.join(f'{r:g}' for r in rates)}")
    seeds = list(args.missing_seeds) if rates else None
    run_bench(models, tasks, args.out, manifest, args.seed, recipe=recipe, allow_missing=args.allow_missing,
              missing_rates=rates, missing_seeds=seeds, cohort=cohort, modalities=mods,
              baselines=not args.no_baselines, pca_components=args.pca_components, cca_components=args.cca_components)
    print((Path(args.out) / "results.md").read_text().split("## All metrics")[0])
    return 0
