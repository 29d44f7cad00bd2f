"""``pathalign embed``: embeddings of every available modality of every patient and slide.

``embeddings.h5`` holds one group per modality (``wsi``, ``rna``, …) with ``ids`` (utf-8) and
``embeddings`` [n, d]; the ``wsi`` group also has ``case_ids`` (the patient of each slide). With
a trained model, ``pairs/<a>-<b>/<a>`` and ``.../<b>`` hold the embeddings projected into each
pair's shared space (l2-normalised, so that retrieval needs no model). Beside it, Patho-Bench
sample files (``pathobench_<name>/by_slide_id/<slide_id>.h5`` and ``.../by_case_id/<case_id>.h5``,
``features`` [1, d], a patient's slides averaged) are written for every way of embedding
(``--model``, ``--slide-encoder``, ``--mean-pool``). Slides that cannot be embedded (no or an
incomplete features file, zero patches, an unreadable file) are skipped and named.

A molecular group also has ``imputed_fraction`` [n] (float32): per patient, the fraction of the
model's features the cohort's table lacks for them, filled with the training mean; the file
attribute ``feature_overlap`` (JSON) gives per modality the model's features found in the table.
Fewer than half of them found is refused before any work (:mod:`pathalign.models.feature_names`).
"""
from __future__ import annotations

import argparse
import sys

from .options import device_option, include, out_option, quiet_option


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


def features_option(features: str | None, cohort: str | None, option: str) -> str | None:
    """The features folder of ``--features`` as ``cohort build`` reads it, else the cohort's.

    Args:
        features: ``--features``: the folder of ``<slide_id>.h5``, or a ``preprocess`` output holding one
            ``features_<encoder>/`` subfolder (:func:`pathalign.cohort.build.resolve_features_dir`).
        cohort: ``--cohort``, whose recorded features folder is used when ``features`` is not given.
        option: the mode (``--mean-pool``, ...) for the error message.

    Returns:
        The folder, or None with neither (``--model`` then uses the cohort's).

    Raises:
        EmbedError: neither given where one is needed; CohortInputError: a folder without features files.
    """
    from ..cohort.build import resolve_features_dir
    from ..evaluate.embed import EmbedError

    if features:
        path, note = resolve_features_dir(features)
        if note:
            print(f"embed: {note}", file=sys.stderr)
        return str(path)
    if cohort:
        from ..cohort import load_cohort

        recorded = load_cohort(cohort).meta.get("slides_dir")
        if recorded:
            return str(recorded)
        if option != "--model":
            raise EmbedError(f"{option}: the cohort {cohort} records no features folder (built without --features); "
                             "give --features DIR")
    elif option != "--model":
        raise EmbedError(f"{option} needs --features DIR (or --cohort, whose features folder is used)")
    return None


def run(args: argparse.Namespace) -> int:
    from ..devices import resolve_device
    from ..evaluate.embed import EmbedError, embed_mean_pool, embed_with_model, embed_with_slide_encoder

    device = resolve_device(args.device)  # before any work
    if not args.model and (args.wsi_level or args.max_tokens is not None):
        raise EmbedError("--wsi-level and --max-tokens apply to --model (a trained pathalign model)")
    if args.model:
        if not args.cohort:
            raise EmbedError("--model needs --cohort")
        features = features_option(args.features, None, "--model")
        summary = embed_with_model(args.model, args.cohort, args.out, features, args.batch_size,
                                   not args.quiet, args.name or "pathalign", device=device,
                                   wsi_level=args.wsi_level, max_tokens=args.max_tokens)
    elif args.mean_pool:
        features = features_option(args.features, args.cohort, "--mean-pool")
        summary = embed_mean_pool(features, args.out, args.cohort, args.name or "mean-pool")
    elif args.slide_encoder:
        features = features_option(args.features, args.cohort, "--slide-encoder")
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
