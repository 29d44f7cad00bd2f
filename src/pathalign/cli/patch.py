"""``pathalign patch SLIDES``: the patch grid inside tissue at a target magnification (``coords/<slide>.h5``).

Segments first where a slide has no segmentation yet. SLIDES are files, folders or globs; under
``torchrun --nproc_per_node=K -m pathalign patch ...`` the slides are sharded across ranks and rank 0
prints the summary.
"""
from __future__ import annotations

import argparse

from .slide_stages import add_patch_arguments, add_segment_arguments, run_stage


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_segment_arguments(p)
    add_patch_arguments(p)


def run(args: argparse.Namespace) -> int:
    return run_stage(args, "patch")
