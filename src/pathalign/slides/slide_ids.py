"""Slide ids are unique per batch.

A slide's id is its file name without the extension (``a.svs`` → ``a``), and every output is
named by it (``features_<encoder>/<id>.h5``). Two inputs of one batch whose ids are equal —
compared after Unicode NFC normalisation and case folding, since macOS and Windows file systems
treat ``A.h5`` and ``a.h5``, or a decomposed and a composed name, as one file — would write the
same outputs: the second would be "skipped" with the first one's output. Such slides are refused
before any work, each with a reason naming every file of its group; the batch goes on for the
others. Rename one of them (or process them into different ``--out`` folders).
"""
from __future__ import annotations

import unicodedata
from collections.abc import Callable, Sequence
from pathlib import Path


def id_key(slide_id: str) -> str:
    """The form under which two slide ids name the same output file on some file system."""
    return unicodedata.normalize("NFC", slide_id).casefold()


def slide_id_collisions(paths: Sequence[Path], id_of: Callable[[Path], str]) -> dict[Path, str]:
    """The paths whose slide id another path of the batch shares, each with the reason.

    Args:
        paths: the batch's slide files.
        id_of: the slide id of a path.

    Returns:
        path → reason naming all files of its group (empty when the ids are unique).
    """
    groups: dict[str, list[Path]] = {}
    for p in paths:
        groups.setdefault(id_key(id_of(p)), []).append(p)
    out = {}
    for group in groups.values():
        if len(group) > 1:
            names = ", ".join(str(p) for p in group)
            for p in group:
                out[p] = (f"slide id {id_of(p)!r} is shared by {len(group)} files of this batch ({names}); their "
                          "outputs would overwrite each other: rename all but one (none of them was processed)")
    return out
