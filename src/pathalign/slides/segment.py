"""Tissue segmentation into fragments, with GeoJSON contours and an outlined thumbnail.

The classical segmenter (``otsu``) works on a low-resolution copy of the slide (``seg_mpp``
µm/px): saturation channel → median blur → threshold (Otsu, or a fixed value) → morphological
closing → contours with holes (OpenCV ``RETR_CCOMP``); fragments smaller than
``min_fragment_um2`` and holes smaller than ``min_hole_um2`` are dropped. Fragment ids
follow reading order (top to bottom, then left to right) so they are stable across runs.
More segmenters plug into ``SEGMENTERS``.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from ..io.atomic import atomic_path
from ..io.tissue import Fragment, fragments_to_geojson, write_geojson
from ..registry import Registry
from .reader import SlideReader

SEGMENTERS: Registry = Registry("tissue segmenter")


@dataclass
class SegmentConfig:
    """Knobs of tissue segmentation (areas in µm², so they mean the same on every scanner)."""

    method: str = "otsu"
    seg_mpp: float = 2.0
    saturation_threshold: int | None = None
    median_blur: int = 5
    close_px: int = 5
    min_fragment_um2: float = 10_000.0
    min_hole_um2: float = 4_000.0

    def __post_init__(self):
        SEGMENTERS.get(self.method)
        if self.seg_mpp <= 0:
            raise ValueError(f"seg_mpp must be positive, got {self.seg_mpp}")
        if self.median_blur % 2 == 0 or self.median_blur < 1:
            raise ValueError(f"median_blur must be an odd positive size, got {self.median_blur}")
        if self.saturation_threshold is not None and not 0 <= self.saturation_threshold <= 255:
            raise ValueError("saturation_threshold must be in 0..255")


@dataclass
class Segmentation:
    fragments: list[Fragment]
    mpp: float
    config: SegmentConfig


def low_res_image(slide: SlideReader, target_mpp: float, tile: int = 2048,
                  transform: Callable[[np.ndarray], np.ndarray] | None = None) -> tuple[np.ndarray, float]:
    """Image of the whole slide at about ``target_mpp``; returns it and its downsample from level 0.

    The closest finer pyramid level is read in tiles of at most ``tile`` px a side (and at most
    ``slide.max_read_px`` per backend call); each tile is shrunk as it arrives, passed through
    ``transform`` (a per-pixel map of an RGB ``uint8`` tile, e.g. to one channel) and copied into the
    result. Memory is therefore the result (``uint8``, RGB or the transform's channels) plus one
    tile and its copies, whatever the size of the slide or its pyramid.

    Args:
        slide: an open slide.
        target_mpp: wanted µm/px (never finer than level 0).
        tile: tile side at the level read.
        transform: per-pixel map applied to each RGB tile after resizing (default: keep RGB).

    Returns:
        ``(image, downsample)``: ``[th, tw, 3]`` RGB (or the transform's output), and level-0 px per pixel.
    """
    want = max(1.0, target_mpp / slide.mpp)
    level = slide.best_level_for_downsample(want)
    lw, lh = slide.level_dimensions[level]
    lds = slide.level_downsamples[level]
    w0, h0 = slide.dimensions
    tw, th = max(1, int(round(w0 / want))), max(1, int(round(h0 / want)))
    exact = (lw, lh) == (tw, th)  # the level already has the wanted size: copy tiles as they are
    scale_x, scale_y = tw / lw, th / lh
    out = None
    for y in range(0, lh, tile):
        for x in range(0, lw, tile):
            w, h = min(tile, lw - x), min(tile, lh - y)
            part = slide.read_region((int(round(x * lds)), int(round(y * lds))), level, (w, h))
            if exact:
                x0, y0, x1, y1 = x, y, x + w, y + h
            else:
                x0, y0 = int(round(x * scale_x)), int(round(y * scale_y))
                x1, y1 = int(round((x + w) * scale_x)), int(round((y + h) * scale_y))
                if x1 <= x0 or y1 <= y0:
                    continue
                part = cv2.resize(part, (x1 - x0, y1 - y0), interpolation=cv2.INTER_AREA)
            if transform is not None:
                part = transform(part)
            if out is None:
                out = np.empty((th, tw) + part.shape[2:], part.dtype)
            out[y0:y1, x0:x1] = part
            del part
    return out, (lds if exact else w0 / tw)


def filter_in_bands(img: np.ndarray, fn: Callable[[np.ndarray], np.ndarray], halo: int,
                    band_rows: int = 1024) -> np.ndarray:
    """Apply a local filter ``fn`` to ``img`` in place, band of rows by band of rows.

    ``fn`` must be local within ``halo`` rows (a median blur of size k: ``k // 2``; a closing with a
    k-px kernel: ``2 * (k // 2)``) and handle the image's top and bottom edges itself; each band is
    filtered with ``halo`` rows of original context on both sides, so the result equals
    ``fn(img)`` while the extra memory is one band instead of a whole copy.

    Returns:
        ``img``, filtered.
    """
    h = img.shape[0]
    saved = img[:0].copy()  # original rows just above the current band (already overwritten in img)
    for r0 in range(0, h, band_rows):
        r1 = min(h, r0 + band_rows)
        top = max(0, r0 - halo)
        block = np.concatenate([saved[len(saved) - (r0 - top):], img[r0:min(h, r1 + halo)]])  # rows top..r1+halo
        saved = block[max(0, r1 - top - halo):r1 - top].copy()  # original rows r1-halo..r1
        img[r0:r1] = fn(block)[r0 - top:r1 - top]
        del block
    return img


def saturation(rgb: np.ndarray) -> np.ndarray:
    """HSV saturation ``uint8 [h, w]`` of an RGB ``uint8`` image (OpenCV's scale, 0..255)."""
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)[..., 1].copy()


@SEGMENTERS.register("otsu")
def otsu_segmenter(slide: SlideReader, cfg: SegmentConfig) -> list[Fragment]:
    """Saturation/Otsu segmentation with holes (see module docstring)."""
    # only the saturation channel is kept at segmentation resolution (1 byte per pixel) and every
    # step works on it in place (local filters band by band); findContours makes one internal copy
    sat, ds = low_res_image(slide, cfg.seg_mpp, transform=saturation)
    filter_in_bands(sat, lambda b: cv2.medianBlur(b, cfg.median_blur), cfg.median_blur // 2)
    flat = int(sat.max()) - int(sat.min()) < 10  # a flat image: Otsu would split noise
    if cfg.saturation_threshold is None:
        cv2.threshold(sat, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU, dst=sat)
        if flat:
            sat[:] = 0
    else:
        cv2.threshold(sat, cfg.saturation_threshold, 255, cv2.THRESH_BINARY, dst=sat)
    mask = sat
    del sat
    if cfg.close_px > 1:
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (cfg.close_px, cfg.close_px))
        filter_in_bands(mask, lambda b: cv2.morphologyEx(b, cv2.MORPH_CLOSE, kernel), 2 * (cfg.close_px // 2))
    contours, hierarchy = cv2.findContours(mask, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    del mask
    if hierarchy is None:
        return []
    hierarchy = hierarchy[0]  # [n, 4]: next, previous, first child, parent
    um2_per_px = (ds * slide.mpp) ** 2
    found = []
    for i, (_, _, child, parent) in enumerate(hierarchy):
        if parent != -1:
            continue
        holes = []
        while child != -1:
            if cv2.contourArea(contours[child]) * um2_per_px >= cfg.min_hole_um2:
                holes.append(contours[child])
            child = hierarchy[child][0]
        area = cv2.contourArea(contours[i]) - sum(cv2.contourArea(h) for h in holes)
        if area * um2_per_px < cfg.min_fragment_um2:
            continue
        to0 = lambda c: (c.reshape(-1, 2).astype(np.float64) + 0.5) * ds  # pixel centres → level-0 px
        found.append((to0(contours[i]), [to0(h) for h in holes]))
    found.sort(key=lambda f: (f[0][:, 1].min(), f[0][:, 0].min()))
    return [Fragment(k, ext, holes) for k, (ext, holes) in enumerate(found)]


def segment_slide(slide: SlideReader, cfg: SegmentConfig | None = None) -> Segmentation:
    """Fragments of ``slide`` by the configured segmenter."""
    cfg = cfg or SegmentConfig()
    return Segmentation(SEGMENTERS.get(cfg.method)(slide, cfg), slide.mpp, cfg)


def label_map(fragments: list[Fragment], shape: tuple[int, int], scale: float, row0: int = 0) -> np.ndarray:
    """``int32 [h, w]`` fragment id per pixel (-1 = background) with level-0 coords multiplied by ``scale``.

    ``row0`` shifts the window down: the result covers raster rows ``row0 .. row0 + h`` (to draw a
    large raster band by band).
    """
    lab = np.full(shape, -1, np.int32)
    shift = 4  # sub-pixel precision bits for fillPoly; pixel (i, j) covers [i, i+1) in raster units

    def ring(r: np.ndarray) -> np.ndarray:
        return np.round((r * scale - 0.5 - np.array([0.0, row0])) * (1 << shift)).astype(np.int32)

    for f in fragments:
        cv2.fillPoly(lab, [ring(f.exterior)], int(f.id), shift=shift)
        for h in f.holes:
            cv2.fillPoly(lab, [ring(h)], -1, shift=shift)
    return lab


def _properties(seg: Segmentation) -> dict:
    """What the tissue GeoJSON records about a segmentation: its mpp and the segmenter's settings."""
    return {"mpp": seg.mpp, "segmenter": asdict(seg.config)}


def to_geojson(seg: Segmentation) -> dict:
    """GeoJSON FeatureCollection of ``seg``'s fragments (:mod:`pathalign.io.tissue`), with its mpp and settings."""
    return fragments_to_geojson(seg.fragments, _properties(seg))


def draw_thumbnail(slide: SlideReader, fragments: list[Fragment], path: str | Path, max_side: int = 1024,
                   coords: np.ndarray | None = None, patch_size_level0: float | None = None,
                   patch_fragment: np.ndarray | None = None) -> None:
    """PNG thumbnail with fragment outlines (green), holes (blue), ids, and optionally patch boxes."""
    w0, h0 = slide.dimensions
    target_mpp = slide.mpp * max(w0, h0) / max_side
    img, ds = low_res_image(slide, target_mpp)
    img = np.ascontiguousarray(img)
    s = 1.0 / ds
    palette = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
               (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]
    if coords is not None and patch_size_level0:
        for (x, y), fid in zip(coords, patch_fragment if patch_fragment is not None else np.zeros(len(coords), int)):
            c = palette[int(fid) % len(palette)]
            cv2.rectangle(img, (int(x * s), int(y * s)), (int((x + patch_size_level0) * s) - 1, int((y + patch_size_level0) * s) - 1), c, 1)
    for f in fragments:
        cv2.polylines(img, [np.round(f.exterior * s).astype(np.int32)], True, (0, 160, 0), 2)
        for h in f.holes:
            cv2.polylines(img, [np.round(h * s).astype(np.int32)], True, (0, 0, 220), 2)
        cx, cy = f.exterior.mean(axis=0) * s
        cv2.putText(img, str(f.id), (int(cx) - 6, int(cy) + 6), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(img, str(f.id), (int(cx) - 6, int(cy) + 6), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (255, 255, 255), 1, cv2.LINE_AA)
    path = Path(path)
    with atomic_path(path, keep_suffix=True) as tmp:  # cv2 picks the encoder by the suffix
        if not cv2.imwrite(str(tmp), cv2.cvtColor(img, cv2.COLOR_RGB2BGR)):
            raise OSError(f"{path}: cannot write the thumbnail")


def write_segmentation(seg: Segmentation, slide: SlideReader, out_dir: str | Path, name: str) -> tuple[Path, Path]:
    """Write ``<name>.geojson`` and ``<name>.png`` (thumbnail with outlines) into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    gj = write_geojson(out_dir / f"{name}.geojson", seg.fragments, _properties(seg))
    png = out_dir / f"{name}.png"
    draw_thumbnail(slide, seg.fragments, png)
    return gj, png
