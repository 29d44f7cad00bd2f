"""``pathalign analyze adapters``: options → :func:`pathalign.evaluate.analyze.analyze_adapters`; what it
computes: :mod:`pathalign.evaluate.analyze` (its docstring is this verb's ``--help``).
"""
from __future__ import annotations

import argparse

from .options import include, library_doc, out_option, seed_option

#: the library module whose docstring is ``--help``'s description
DOC_FROM = "pathalign.evaluate.analyze"


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="analysis", metavar="ANALYSIS", required=True)
    a = sub.add_parser("adapters", help="subspaces, CKA and input attribution of the pair adapters W_ij",
                       description=library_doc(DOC_FROM), formatter_class=argparse.RawDescriptionHelpFormatter,
                       parents=[out_option("output folder")])
    a.add_argument("--model", required=True, help="a trained model folder (RUN/model)")
    a.add_argument("--cohort", help="cohort folder: adds CKA of projected embeddings and input attribution")
    a.add_argument("--embeddings", help="embeddings.h5 from `pathalign embed` with the same model: adds the slide "
                                        "modality to CKA and attribution (slides are not re-encoded here)")
    a.add_argument("--patients", choices=("all", "heldout"), default="all",
                   help="patients used for CKA and attribution: all, or the model's held-out patients")
    a.add_argument("--k", type=int, default=8, help="dominant input directions compared per adapter (default 8)")
    a.add_argument("--top", type=int, default=20, help="input features listed per adapter (default 20)")
    a.add_argument("--null-draws", type=int, default=200, help="random matrices in each null (default 200)")
    include(a, seed_option("seed of the nulls"))


def run(args: argparse.Namespace) -> int:
    from ..evaluate.analyze import analyze_adapters

    result = analyze_adapters(args.model, args.out, cohort_path=args.cohort, embeddings_path=args.embeddings,
                              heldout_only=args.patients == "heldout", k=args.k, top=args.top, draws=args.null_draws,
                              seed=args.seed)
    print(f"adapters: {len(result['adapters'])} adapters, {len(result['same_source'])} same-source and "
          f"{len(result['same_target'])} same-target comparisons -> {args.out}")
    return 0
