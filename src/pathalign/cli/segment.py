"""``pathalign segment SLIDES``: tissue fragments of each slide (GeoJSON + outlined thumbnail) under ``--out``.

SLIDES are files, folders or globs. Under ``torchrun --nproc_per_node=K -m pathalign segment ...`` the
slides are sharded across ranks and rank 0 prints the summary.
"""
from __future__ import annotations

import argparse

from .slide_stages import add_segment_arguments, run_stage


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_segment_arguments(p)


def run(args: argparse.Namespace) -> int:
    return run_stage(args, "segment")
