"""``pathalign doctor SLIDES...``: a pre-flight check of slides, before a long ``preprocess`` job.

Per slide, from its metadata only (no pixel is segmented, patched or encoded): whether it opens,
the backend that opened it, mpp and where it came from, objective power, pyramid levels, the
level-0 magnification and patch grid ``preprocess`` would use under the chosen ``--scale``, and
what is wrong. Printed as a table; ``--json FILE`` writes the same rows as JSON. The exit code is
0 when every slide can be preprocessed with these settings, 3 otherwise.
"""
from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    from .slide_stages import add_grid_arguments, add_reader_arguments

    p.add_argument("slides", nargs="+", metavar="SLIDES", help="slide files, folders or glob patterns")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the rows as JSON to FILE")
    add_grid_arguments(p)  # the options of patch / preprocess, so that doctor checks what they will do
    add_reader_arguments(p)


def run(args: argparse.Namespace) -> int:
    import json

    from ..io.atomic import atomic_write_text
    from ..slides.doctor import check_slide, format_table
    from ..slides.patch import PatchConfig
    from ..slides.pipeline import find_slides
    from .slide_stages import SlideSettingsError

    try:
        cfg = PatchConfig(args.magnification, args.patch_size, scale=args.scale)
    except ValueError as e:
        raise SlideSettingsError(f"doctor settings: {e}") from None
    slides = find_slides(args.slides)
    if not slides:
        raise SlideSettingsError("no slides found in " + " ".join(args.slides))
    rows = [check_slide(p, cfg, args.backend, args.mpp) for p in slides]
    print(format_table(rows))
    if args.json:
        atomic_write_text(json.dumps(rows, indent=1), args.json)
    return 0 if all(r["ok"] for r in rows) else 3
