"""Checks of patch-features files that a consumer (cohort build, training) runs before any work.

A features file can be complete and still unusable: a slide where no tissue was found has a
complete file with zero patches (the pipeline records it so that reruns skip it); a file from
another tool may lack the ``features`` dataset, disagree with its coordinates, or have another
feature dim than the rest. Found only when a training step draws the slide, any of these stops
a run mid-way; :func:`check_feature_files` finds them all up front by reading shapes only.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import h5py

ZERO_PATCHES = "zero patches (no tissue found in the slide)"


@dataclass
class FeatureCheck:
    """What :func:`check_feature_files` found.

    Args:
        n_patches: slide id → patches, for the readable files.
        dims: slide id → feature dim, for the files with features.
        problems: slide id → why the slide cannot be used.
    """

    n_patches: dict[str, int] = field(default_factory=dict)
    dims: dict[str, int] = field(default_factory=dict)
    problems: dict[str, str] = field(default_factory=dict)

    def describe(self, limit: int = 5) -> str:
        """The problems in one line (the first ``limit`` named)."""
        items = list(self.problems.items())
        text = "; ".join(f"{s}: {why}" for s, why in items[:limit])
        return text + (f"; and {len(items) - limit} more" if len(items) > limit else "")


def _shape(ds) -> tuple[int, ...]:
    shape = tuple(ds.shape)
    return shape[1:] if len(shape) == 3 and shape[0] == 1 else shape  # some tools store [1, N, C]


def patch_count(path: Path) -> int | None:
    """Patches in a coords/features file (None: unreadable or no ``coords``)."""
    try:
        with h5py.File(path, "r") as fh:
            return int(_shape(fh["coords"])[0]) if "coords" in fh else None
    except (OSError, IndexError):
        return None


def check_feature_files(features_dir: str | Path, slide_ids: Iterable[str], need_features: bool = True) -> FeatureCheck:
    """Read the shapes of ``<features_dir>/<slide_id>.h5`` and name every slide that cannot be used.

    Args:
        features_dir: the features folder.
        slide_ids: the slides to check.
        need_features: also require a ``features`` dataset matching the coordinates, and one feature
            dim for all slides (the most common one; the others are problems).

    Returns:
        The :class:`FeatureCheck`.
    """
    out = FeatureCheck()
    features_dir = Path(features_dir)
    for sid in slide_ids:
        path = features_dir / f"{sid}.h5"
        try:
            with h5py.File(path, "r") as fh:
                if "coords" not in fh:
                    out.problems[sid] = f"{path}: no 'coords' dataset"
                    continue
                n = int(_shape(fh["coords"])[0])
                out.n_patches[sid] = n
                if n == 0:
                    out.problems[sid] = f"{path}: {ZERO_PATCHES}"
                    continue
                if not need_features:
                    continue
                if "features" not in fh:
                    out.problems[sid] = f"{path}: coordinates but no 'features' dataset"
                    continue
                shape = _shape(fh["features"])
                if len(shape) != 2 or shape[0] != n:
                    out.problems[sid] = f"{path}: features of shape {tuple(fh['features'].shape)} for {n} coordinates"
                    continue
                out.dims[sid] = int(shape[1])
        except (OSError, IndexError) as e:
            out.problems[sid] = f"{path}: not a readable features file ({e})"
    if need_features and out.dims:
        dim = Counter(out.dims.values()).most_common(1)[0][0]
        for sid, d in list(out.dims.items()):
            if d != dim:
                out.problems[sid] = f"{features_dir / f'{sid}.h5'}: {d}-dim features, the other slides' have {dim}"
                del out.dims[sid]
    return out
