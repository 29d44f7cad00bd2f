"""``pathalign preprocess SLIDES``: segment, patch and extract in one go, resumable, under ``--out``.

SLIDES are files, folders or globs. Under ``torchrun --nproc_per_node=K -m pathalign preprocess ...``
the slides are sharded across ranks (one GPU each) and rank 0 prints the summary.
"""
from __future__ import annotations

import argparse

from .slide_stages import add_extract_arguments, add_patch_arguments, add_segment_arguments, run_stage


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_segment_arguments(p)
    add_patch_arguments(p)
    add_extract_arguments(p)


def run(args: argparse.Namespace) -> int:
    return run_stage(args, "extract")
