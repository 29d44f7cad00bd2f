"""``pathalign extract SLIDES``: patch features of each slide (``features_<encoder>/<slide>.h5``).

Segments and patches first where a slide lacks them. SLIDES are files, folders or globs; under
``torchrun --nproc_per_node=K -m pathalign extract ...`` the slides are sharded across ranks (one GPU
each) and rank 0 prints the summary.
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
