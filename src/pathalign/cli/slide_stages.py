"""What the slide pipeline verbs share: ``segment``, ``patch``, ``extract`` and ``preprocess`` (all three).

Each runs its stage and any missing earlier stage on SLIDES (files, folders or globs),
writing under ``--out``. Under ``torchrun --nproc_per_node=K -m pathalign preprocess ...``
the slides are sharded across ranks (one GPU each) and rank 0 prints the summary.

A verb takes the options of the stages it runs, no others: ``segment`` the segmentation ones,
``patch`` those and the patch grid's, ``extract`` and ``preprocess`` those and the patch encoder's.
"""
from __future__ import annotations

import argparse

from ..devices import DEVICE_HELP
from ..errors import PathalignError
from .options import device_option, include, out_option, quiet_option


class SlideSettingsError(PathalignError, ValueError):
    """Unusable slide-stage settings or no slide to work on; the message names the option or the paths."""


def add_reader_arguments(p: argparse.ArgumentParser) -> None:
    """How a slide is opened: ``--mpp`` and ``--backend`` (every slide verb, and ``doctor``).

    The backends are the reader's own (:data:`pathalign.slides.reader.SLIDE_BACKENDS`), plus ``auto``."""
    from ..slides.reader import SLIDE_BACKENDS

    backends = ["auto", *SLIDE_BACKENDS.names()]
    p.add_argument("--mpp", type=float, default=None,
                   help="µm/px for slides whose file has none (before the file's objective power)")
    p.add_argument("--backend", choices=backends, default="auto",
                   help=f"slide reader: {', '.join(backends)} (auto: the first that opens the slide)")


def add_grid_arguments(p: argparse.ArgumentParser) -> None:
    """The patch grid: ``--magnification``, ``--patch-size``, ``--scale`` (``patch``, ``extract``, ``preprocess``,
    and ``doctor``, which reports the grid they would use)."""
    from ..slides.scale import SCALES

    p.add_argument("--magnification", type=float, default=20.0, help="target magnification (default 20)")
    p.add_argument("--patch-size", type=int, default=256, help="patch side in px at the target magnification")
    p.add_argument("--scale", choices=SCALES, default="nominal",
                   help="level-0 patch size from the nominal magnification (the mpp binned, as Trident does; "
                   "default) or from the exact mpp (as EXAONE Path 2.5's patchify does)")


def add_segment_arguments(p: argparse.ArgumentParser) -> None:
    """SLIDES, ``--out``, the reader's and the segmentation's options (every slide verb has them)."""
    p.add_argument("slides", nargs="+", metavar="SLIDES", help="slide files, folders or glob patterns")
    include(p, out_option("output folder"))
    add_reader_arguments(p)
    p.add_argument("--seg-mpp", type=float, default=2.0, help="segmentation resolution (µm/px)")
    p.add_argument("--saturation-threshold", type=int, default=None, help="fixed saturation threshold (default Otsu)")
    p.add_argument("--min-fragment-um2", type=float, default=10_000, help="smallest kept fragment (µm²)")
    p.add_argument("--min-hole-um2", type=float, default=4_000, help="smallest kept hole (µm²)")
    include(p, quiet_option("no progress bars"))


def add_patch_arguments(p: argparse.ArgumentParser) -> None:
    """The patch grid's options and the kept patches' tissue fraction (``patch``, ``extract``, ``preprocess``)."""
    add_grid_arguments(p)
    p.add_argument("--tissue-threshold", type=float, default=0.5, help="minimum tissue fraction of a kept patch")


def add_extract_arguments(p: argparse.ArgumentParser) -> None:
    """The patch encoder's options (``extract``, ``preprocess``)."""
    p.add_argument("--encoder", default="pathalign-stats", help="patch encoder (pathalign-stats, uni, virchow2, ...)")
    p.add_argument("--weights", default=None, help="local weights of the patch encoder (file or Hub snapshot folder)")
    p.add_argument("--workers", type=int, default=0, help="DataLoader processes reading patches")
    p.add_argument("--batch-size", type=int, default=64, help="patches per inference batch")
    include(p, device_option(help=f"where extract runs the patch encoder: {DEVICE_HELP} "
                             "(half precision on CUDA where the encoder's publisher uses it)"))
    p.add_argument("--float32", action="store_true", help="store features as float32 (default float16)")


def run_stage(args: argparse.Namespace, stage: str) -> int:
    """Run the slide pipeline up to ``stage`` with the parsed options; 3 when a slide failed."""
    from ..distributed import env_ranks, teardown_distributed
    from ..slides.patch import PatchConfig
    from ..slides.pipeline import PipelineConfig, find_slides, format_summary, run_pipeline, validate_encoder
    from ..slides.segment import SegmentConfig

    extract = {}
    if stage == "extract":
        validate_encoder(args.encoder)  # PatchEncoderError (a PathalignError): one line from pathalign.cli.main
        extract = dict(encoder=args.encoder, weights=args.weights, batch_size=args.batch_size, workers=args.workers,
                       features_dtype="float32" if args.float32 else "float16")
    try:
        patch = (PatchConfig(args.magnification, args.patch_size, args.tissue_threshold, args.scale)
                 if stage != "segment" else PatchConfig())
        cfg = PipelineConfig(
            out=args.out, stage=stage, backend=args.backend, mpp=args.mpp, progress=not args.quiet,
            # the device is resolved per process by run_pipeline (pathalign.distributed.setup_distributed)
            device=getattr(args, "device", "auto"),
            segment=SegmentConfig(seg_mpp=args.seg_mpp, saturation_threshold=args.saturation_threshold,
                                  min_fragment_um2=args.min_fragment_um2, min_hole_um2=args.min_hole_um2),
            patch=patch, **extract)
    except ValueError as e:  # the settings' own checks
        raise SlideSettingsError(f"{stage} settings: {e}") from None
    slides = find_slides(args.slides)
    if not slides:
        raise SlideSettingsError("no slides found in " + " ".join(args.slides))
    summary = run_pipeline(slides, cfg)
    teardown_distributed()  # all ranks leave together (a no-op outside torchrun)
    if env_ranks()[0] == 0:
        print(format_summary(summary))
    return 0 if (summary.status != "failed").all() else 3
