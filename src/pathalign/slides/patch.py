"""Patching inside tissue at a target magnification; each patch carries its fragment id.

The level-0 patch side follows ``PatchConfig.scale`` (``slides.scale``): ``nominal`` takes it
from the nominal level-0 magnification (the mpp binned, as Trident does), ``exact-mpp`` from the
exact mpp (as EXAONE Path 2.5's ``patchify`` does).
Patches tile the slide on a grid from (0, 0) without overlap; a patch is kept when the
tissue (fragments minus holes) covers at least ``tissue_threshold`` of it, and it belongs to
the fragment covering most of it. Coverage is measured on a raster with 16 x 16 cells per patch
drawn from the level-0 polygons, so it does not depend on the segmentation resolution.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..io.tissue import Fragment
from .reader import SlideReader
from .scale import SCALES, level0_patch_size
from .segment import label_map

CELLS = 16  # raster cells per patch side
BAND_CELLS = 1 << 22  # raster cells drawn at once (about 64 MiB of temporaries)


@dataclass
class PatchConfig:
    """Patching knobs."""

    magnification: float = 20.0
    patch_size: int = 256
    tissue_threshold: float = 0.5
    scale: str = "nominal"  # nominal (Trident) or exact-mpp (EXAONE Path 2.5), see slides.scale

    def __post_init__(self):
        if self.magnification <= 0 or self.patch_size <= 0:
            raise ValueError("magnification and patch_size must be positive")
        if self.scale not in SCALES:
            raise ValueError(f"scale must be one of {', '.join(SCALES)}, got {self.scale!r}")
        if not 0 < self.tissue_threshold <= 1:
            raise ValueError(f"tissue_threshold must be in (0, 1], got {self.tissue_threshold}")


@dataclass
class PatchGrid:
    coords: np.ndarray  # int64 [N, 2] level-0 (x, y) of each patch's top-left corner
    fragment: np.ndarray  # int64 [N]
    tissue_fraction: np.ndarray  # float32 [N]
    attrs: dict  # the coords attributes of DESIGN §3


def patch_geometry(slide: SlideReader, cfg: PatchConfig) -> dict:
    """Level-0 patch size, the level to read from and its size, and the coords attributes.

    The attributes record the scale rule, the mpp used and where it came from (``file``, ``user``
    or ``objective-power``) and the file's objective power where it has one.
    """
    level0_mag = slide.magnification if cfg.scale == "nominal" else 10.0 / slide.mpp
    if cfg.magnification > level0_mag * 1.01:
        raise ValueError(f"{slide.path}: target {cfg.magnification}x is above the scan's {level0_mag:g}x "
                         f"({slide.mpp:g} µm/px, scale {cfg.scale})")
    size0, downsample = level0_patch_size(cfg.patch_size, cfg.magnification, cfg.scale, slide.mpp, level0_mag)
    level = slide.best_level_for_downsample(downsample)
    read_size = int(round(size0 / slide.level_downsamples[level]))
    return {"patch_size": cfg.patch_size, "patch_size_level0": size0, "target_magnification": cfg.magnification,
            "level0_magnification": level0_mag, "mpp": slide.mpp, "mpp_source": slide.mpp_source,
            "objective_power": slide.objective_power, "scale": cfg.scale, "read_level": level,
            "read_size": read_size}


def patch_slide(slide: SlideReader, fragments: list[Fragment], cfg: PatchConfig | None = None,
                band_cells: int = BAND_CELLS) -> PatchGrid:
    """Patches of ``slide`` inside ``fragments`` (see module docstring).

    The coverage raster is drawn in bands of whole patch rows of at most ``band_cells`` raster cells
    (at least one patch row), so memory is one band (about 16 bytes per cell) plus the kept patches,
    whatever the size of the slide.
    """
    cfg = cfg or PatchConfig()
    attrs = patch_geometry(slide, cfg)
    size0 = attrs["patch_size_level0"]
    w0, h0 = slide.dimensions
    cols, rows = w0 // size0, h0 // size0
    if not fragments or cols == 0 or rows == 0:
        empty = np.zeros((0, 2), np.int64)
        return PatchGrid(empty, np.zeros(0, np.int64), np.zeros(0, np.float32), attrs)
    scale = CELLS / size0
    n_lab = max(f.id for f in fragments) + 2  # background (-1) and each fragment id, shifted by one
    band = max(1, band_cells // (cols * CELLS * CELLS))  # patch rows per band
    coords, frags, fracs = [], [], []
    for r0 in range(0, rows, band):
        nb = min(band, rows - r0)
        lab = label_map(fragments, (nb * CELLS, cols * CELLS), scale, row0=r0 * CELLS)  # [nb*16, cols*16]
        cells = lab.reshape(nb, CELLS, cols, CELLS).transpose(0, 2, 1, 3).reshape(nb * cols, CELLS * CELLS)
        del lab
        patch_of = np.arange(nb * cols, dtype=np.int64)[:, None] * n_lab
        counts = np.bincount((patch_of + cells + 1).ravel(), minlength=nb * cols * n_lab).reshape(nb, cols, n_lab)
        del cells, patch_of
        tissue = counts[..., 1:].sum(-1) / float(CELLS * CELLS)  # [nb, cols]
        keep_r, keep_c = np.nonzero(tissue >= cfg.tissue_threshold)
        coords.append(np.stack([keep_c * size0, (keep_r + r0) * size0], axis=1).astype(np.int64))
        frags.append(counts[keep_r, keep_c, 1:].argmax(-1).astype(np.int64))
        fracs.append(tissue[keep_r, keep_c].astype(np.float32))
    return PatchGrid(np.concatenate(coords), np.concatenate(frags), np.concatenate(fracs), attrs)
