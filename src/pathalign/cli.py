"""``pathalign`` command line: one subcommand per pipeline stage.

Each subcommand lives in the module that does the work; that module exposes
``add_arguments(parser)`` and ``run(args) -> int``. This file only maps names to modules,
imported lazily so that ``pathalign --help`` stays fast.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, one-line help[, defaults set on the parsed arguments])
SUBCOMMANDS: dict[str, tuple] = {
    "segment": ("pathalign.slides.cli", "segment slides into tissue fragments (GeoJSON + thumbnail)", {"stage": "segment"}),
    "patch": ("pathalign.slides.cli", "patch tissue at a target magnification (coords.h5)", {"stage": "patch"}),
    "extract": ("pathalign.slides.cli", "extract patch features (features.h5)", {"stage": "extract"}),
    "preprocess": ("pathalign.slides.cli", "segment, patch and extract in one go (torchrun-shardable)",
                   {"stage": "extract"}),
    "synth": ("pathalign.synth", "write a synthetic multimodal cohort in the real file formats"),
    "cohort": ("pathalign.cohort.cli", "build a cohort from clinical, slide and molecular tables"),
    "pretrain-rna": ("pathalign.train.rna_pretrain", "pretrain the RNA foundation model on a cohort's RNA samples"),
    "train": ("pathalign.train.cli", "train the multimodal alignment (torchrun for DDP)"),
    "embed": ("pathalign.evaluate.embed", "embed every modality of every patient and slide (embeddings.h5)"),
    "bench": ("pathalign.evaluate.bench", "benchmark embeddings: probes, survival, retrieval, cross-modal retrieval"),
    "demo": ("pathalign.demo", "the whole life cycle on a synthetic cohort, with a report (what make demo runs)"),
    "ablate": ("pathalign.evaluate.ablate", "train and bench the paper's ablations with one seed set"),
    "encode-example": ("pathalign.commands.encode_example", "encode a random slide with the F-RoPE slide encoder"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pathalign", description="Align whole-slide images with molecular profiles.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text, *defaults) in SUBCOMMANDS.items():
        mod = importlib.import_module(module)
        p = sub.add_parser(name, help=help_text, description=(mod.__doc__ or help_text).strip(),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        mod.add_arguments(p)
        p.set_defaults(_module=mod, **(defaults[0] if defaults else {}))
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        return int(args._module.run(args) or 0)
    except BrokenPipeError:  # output piped into `head` and friends: not an error
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
