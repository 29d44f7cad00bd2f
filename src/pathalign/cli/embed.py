"""``pathalign embed``: options → :func:`pathalign.evaluate.embed.embed_with_model` (or ``embed_mean_pool``,
``embed_with_slide_encoder``); what it writes: :mod:`pathalign.evaluate.embed` (its docstring is the ``--help``).
"""
from __future__ import annotations

import argparse
import sys

from .options import device_option, include, out_option, quiet_option

#: the library module whose docstring is ``--help``'s description
DOC_FROM = "pathalign.evaluate.embed"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="trained model folder (RUN/model)")
    p.add_argument("--cohort", help="cohort folder (with --slide-encoder/--mean-pool: gives each slide's patient)")
    p.add_argument("--features", help="patch-features folder, or a preprocess output with one features_<encoder>/ "
                                       "subfolder, as cohort build takes it (default: the --cohort's)")
    p.add_argument("--slide-encoder", help="instead of --model: a bare slide encoder, e.g. exaone-path-2.5")
    p.add_argument("--mean-pool", action="store_true",
                   help="instead of --model: the mean-pooling baseline of --features (or of the --cohort's)")
    p.add_argument("--weights", help="weights of --slide-encoder (published checkpoint)")
    include(p, out_option("embeddings.h5 to write (its folder is created)"))
    p.add_argument("--name", default=None,
                   help="model name of the Patho-Bench sample folder pathobench_<name>/ (by_slide_id/, by_case_id/) "
                        "written beside --out (default: pathalign, the --slide-encoder name, or mean-pool)")
    p.add_argument("--batch-size", type=int, default=16, help="slides per packed pass")
    p.add_argument("--wsi-level", default=None, choices=["slide", "patient"],
                   help="with --model: slide (one embedding per slide) or patient (a patient's slides encoded as one "
                        "sequence; every slide row of embeddings.h5 holds its patient's embedding); default: the "
                        "level the model was trained at")
    p.add_argument("--max-tokens", type=int, default=None,
                   help="with a patient level: patches per patient at most (a patient over it keeps that many, shared "
                        "by its slides in proportion, seeded by the patient id; recorded in embeddings.h5); default: all")
    include(p, device_option(), quiet_option())


def run(args: argparse.Namespace) -> int:
    from ..cohort.build import features_dir_for
    from ..devices import resolve_device
    from ..evaluate.embed import EmbedError, embed_mean_pool, embed_with_model, embed_with_slide_encoder

    def features_dir(cohort: str | None, mode: str) -> str | None:  # and its note on stderr
        path, note = features_dir_for(args.features, cohort, mode)
        if note:
            print(f"embed: {note}", file=sys.stderr)
        return path

    device = resolve_device(args.device)  # before any work
    if not args.model and (args.wsi_level or args.max_tokens is not None):
        raise EmbedError("--wsi-level and --max-tokens apply to --model (a trained pathalign model)")
    if args.model:
        if not args.cohort:
            raise EmbedError("--model needs --cohort")
        features = features_dir(None, "--model")
        summary = embed_with_model(args.model, args.cohort, args.out, features, args.batch_size,
                                   not args.quiet, args.name or "pathalign", device=device,
                                   wsi_level=args.wsi_level, max_tokens=args.max_tokens)
    elif args.mean_pool:
        features = features_dir(args.cohort, "--mean-pool")
        summary = embed_mean_pool(features, args.out, args.cohort, args.name or "mean-pool")
    elif args.slide_encoder:
        features = features_dir(args.cohort, "--slide-encoder")
        summary = embed_with_slide_encoder(args.slide_encoder, args.weights, features, args.out,
                                           args.batch_size, not args.quiet, args.cohort, args.name, device=device)
    else:
        raise EmbedError("give --model (with --cohort), --slide-encoder or --mean-pool (with --features)")
    for w in summary.warnings:
        print(f"warning: {w}", file=sys.stderr)
    for sid, why in summary.skipped.items():
        print(f"embed: skipped slide {sid}: {why}", file=sys.stderr)
    print("embedded: " + ", ".join(f"{m} {n}" for m, n in summary.counts.items()) + f" -> {args.out}"
          + (f"; Patho-Bench files in {summary.pathobench_dir}" if summary.pathobench_dir else "")
          + (f"; {len(summary.skipped)} slides skipped (named above)" if summary.skipped else ""))
    return 0
