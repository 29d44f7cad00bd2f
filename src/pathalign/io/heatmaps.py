"""The heatmaps file ``<slide>.heatmaps.h5``: per-patch scores of a model on one slide.

Layout: ``coords`` ``[N, 2]`` (level-0 x, y of each patch's top-left corner), ``fragment`` ``[N]`` and
``scores/<name>`` ``[N]`` float32, in the input order of the slide's features file; the slide id and
the patch side (level-0 px) as attributes. Score names with a ``/`` are nested groups
(``scores/attention/block1_rope``). Written by ``pathalign heatmap``, read by ``pathalign view``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import PathalignError
from .atomic import atomic_path
from .hdf5 import open_hdf5


class HeatmapFileError(PathalignError, ValueError):
    """A heatmaps file that cannot be read; the message names the file."""


@dataclass
class SlideHeatmaps:
    """The scores of one slide, in the input order of its features file.

    Attributes:
        slide_id: the features file's stem.
        coords: ``[N, 2]`` level-0 (x, y) of each patch's top-left corner.
        fragment: ``[N]`` tissue fragment id of each patch.
        patch_size_level0: patch side in level-0 px.
        scores: name -> ``[N]`` float32.
        notes: what could not be scored and why.
    """

    slide_id: str
    coords: np.ndarray
    fragment: np.ndarray
    patch_size_level0: float
    scores: dict[str, np.ndarray] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def write_heatmaps(path: str | Path, hm: SlideHeatmaps) -> Path:
    """Write ``hm`` as HDF5 (atomically); see the module docstring for the layout."""
    import h5py

    path = Path(path)
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as fh:
        fh.attrs["slide_id"] = hm.slide_id
        fh.attrs["patch_size_level0"] = hm.patch_size_level0
        fh.create_dataset("coords", data=hm.coords)
        fh.create_dataset("fragment", data=hm.fragment)
        for name, values in hm.scores.items():
            fh.create_dataset(f"scores/{name}", data=values.astype(np.float32))
    return path


def read_heatmaps(path: str | Path) -> SlideHeatmaps:
    """Read a file written by :func:`write_heatmaps`."""
    import h5py

    scores: dict[str, np.ndarray] = {}
    with open_hdf5(path, HeatmapFileError, "heatmap file") as fh:
        fh["scores"].visititems(lambda name, obj: scores.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset)
                                else None)
        return SlideHeatmaps(str(fh.attrs["slide_id"]), fh["coords"][()], fh["fragment"][()],
                             float(fh.attrs["patch_size_level0"]), scores)
