"""Synthetic H&E-like whole-slide images written as pyramidal tiled TIFF with mpp.

A slide holds 1-6 tissue fragments on a bright background. Inside each fragment the tissue
is tumour, stroma, immune infiltrate or necrosis; the composition follows the patient's
programs, the textures its cancer type and subtype, and the *arrangement* its hidden
spatial pattern: the tumour occupies the left or the right part of every fragment (in slide
axes), with the same area either way. Fragments are centrally symmetric in distribution, so
the two patterns have the same composition and the same tumour/stroma interface: only a
model that knows where patches sit relative to each other can tell them apart. A few fragments
(``discordant_fragments``) put the tumour on the other side.

The tumour is made of two subclones, with large and with small nuclei, in equal areas (the nuclear
area fraction is the same in both, so the mean haematoxylin is too). In every fragment the
large-nucleus subclone fills the upper half of the tumour when ``genomic_instability`` is high and
the lower half when it is low: the two states have the same patches in the same amounts and differ
only in where they sit, so the mean of patch features cannot tell them apart. (A first version
mixed the subclones finely in one state and coarsely in the other; mean pooling of the built-in
encoder's features read that at 0.84 balanced accuracy, so it did not isolate the claim.)

Colours are made by Beer–Lambert mixing of haematoxylin and eosin optical densities, so
stain deconvolution recovers them.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import tifffile

from ..io.atomic import atomic_path
from .state import CANCER_TYPES, PATTERNS

# optical density per unit stain (R, G, B), Ruifrok & Johnston
OD_HEMATOXYLIN = np.array([0.65, 0.70, 0.29], np.float32)
OD_EOSIN = np.array([0.07, 0.99, 0.11], np.float32)
BANK = 512  # texture tile side (px)
CLASSES = ("tumour", "stroma", "immune", "necrosis")
TUMOUR_CELLS = ("large", "small")  # the two tumour subclones
TYPE_STYLE = {  # nucleus radius (px), tumour nuclear density, eosin strength: close on purpose, so that
    "BRCA": (5, 0.0045, 0.55),  # cancer types differ subtly in morphology and strongly in molecules
    "LUAD": (5.5, 0.0040, 0.52),
    "COAD": (4.5, 0.0050, 0.58),
}


def _nuclei(rng, shape, density: float, radius: float, jitter: float = 0.35) -> np.ndarray:
    """A haematoxylin density map with ``density`` nuclei per px of ``radius``."""
    img = np.zeros(shape, np.float32)
    n = int(density * shape[0] * shape[1])
    ys, xs = rng.integers(0, shape[0], n), rng.integers(0, shape[1], n)
    rs = np.maximum(1, radius * (1 + jitter * rng.standard_normal(n))).astype(int)
    for y, x, r in zip(ys, xs, rs):
        cv2.circle(img, (int(x), int(y)), int(r), 1.0, -1)
    return cv2.GaussianBlur(img, (0, 0), 1.0)


def _fibres(rng, shape, angle: float) -> np.ndarray:
    """Anisotropic smoothed noise: collagen-like streaks."""
    noise = rng.standard_normal(shape).astype(np.float32)
    k = cv2.getGaussianKernel(31, 8.0) @ cv2.getGaussianKernel(31, 1.2).T
    m = cv2.getRotationMatrix2D((15, 15), np.degrees(angle), 1.0)
    k = cv2.warpAffine(k.astype(np.float32), m, (31, 31))
    f = cv2.filter2D(noise, -1, k / k.sum())
    return (f - f.mean()) / (f.std() + 1e-6)


def _to_rgb(h: np.ndarray, e: np.ndarray) -> np.ndarray:
    od = h[..., None] * OD_HEMATOXYLIN + e[..., None] * OD_EOSIN
    return np.clip(255 * np.exp(-od), 0, 255).astype(np.uint8)


def texture_bank(seed: int, nucleus_contrast: float = 0.35) -> dict[tuple[str, int, str], np.ndarray]:
    """RGB ``[BANK, BANK, 3]`` textures per (cancer type, subtype index, tissue class); the tumour comes as
    ``tumour_large`` and ``tumour_small`` (nucleus radius times ``1 + nucleus_contrast`` or divided by it, with
    the nucleus count scaled so that the nuclear area fraction stays the same)."""
    bank = {}
    for ti, ctype in enumerate(CANCER_TYPES):
        radius, density, eosin = TYPE_STYLE[ctype]
        for sub in (0, 1):
            rng = np.random.default_rng([seed, 99, ti, sub])
            shape = (BANK, BANK)
            # tumour: subtype 0 glandular (nuclei around clear lumina), subtype 1 solid sheets
            e = eosin * (0.6 + 0.25 * rng.random(shape).astype(np.float32))
            lumina = _nuclei(rng, shape, 0.00025, 4 * radius, 0.2) if sub == 0 else None
            for kind, scale in zip(TUMOUR_CELLS, (1 + nucleus_contrast, 1 / (1 + nucleus_contrast))):
                nuc = _nuclei(rng, shape, density * (1.0 if sub else 0.8) / scale ** 2, radius * scale)
                ek = e
                if lumina is not None:
                    nuc *= 1 - np.clip(lumina * 1.5, 0, 1)
                    ek = e * (1 - 0.8 * np.clip(lumina, 0, 1))
                bank[(ctype, sub, f"tumour_{kind}")] = _to_rgb(1.3 * nuc + 0.08, ek)
            fib = _fibres(rng, shape, rng.uniform(0, np.pi))
            snuc = _nuclei(rng, shape, 0.0006, max(2, radius - 2), 0.5)
            bank[(ctype, sub, "stroma")] = _to_rgb(0.9 * snuc + 0.05, eosin * (0.8 + 0.25 * fib))
            inuc = _nuclei(rng, shape, 0.009, 3, 0.15)
            bank[(ctype, sub, "immune")] = _to_rgb(1.6 * inuc + 0.1, eosin * 0.5 + 0.05 * fib)
            debris = _nuclei(rng, shape, 0.004, 1.5, 0.6)
            bank[(ctype, sub, "necrosis")] = _to_rgb(0.6 * debris + 0.05, eosin * (0.8 + 0.2 * fib))
    return bank


def _layout(n: int) -> tuple[int, int]:
    return {1: (1, 1), 2: (1, 2), 3: (2, 2), 4: (2, 2)}.get(n, (2, 3))


GEOMETRY_SCALE = 4  # fragment geometry is computed at 1/4 resolution, then upsampled


def fragment_geometry(rng: np.random.Generator, size: int, n_fragments: int) -> tuple[np.ndarray, np.ndarray]:
    """Fragment id (-1 = background) and, inside each fragment, the rank of each pixel's x coordinate
    among the fragment's pixels (0 = leftmost, 1 = rightmost), ``[size, size]``."""
    rows, cols = _layout(n_fragments)
    slots = rng.permutation(rows * cols)[:n_fragments]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    frag = np.full((size, size), -1, np.int16)
    xrank = np.zeros((size, size), np.float32)
    sh, sw = size / rows, size / cols
    for f, slot in enumerate(slots):
        cy, cx = (slot // cols + 0.5) * sh, (slot % cols + 0.5) * sw
        ry = sh * rng.uniform(0.28, 0.4)
        rx = sw * rng.uniform(0.28, 0.4)
        theta = rng.uniform(0, np.pi)
        y0, y1 = int(max(0, cy - sh / 2)), int(min(size, cy + sh / 2))
        x0, x1 = int(max(0, cx - sw / 2)), int(min(size, cx + sw / 2))
        dy, dx = yy[y0:y1, x0:x1] - cy, xx[y0:y1, x0:x1] - cx
        u = dx * np.cos(theta) + dy * np.sin(theta)
        v = -dx * np.sin(theta) + dy * np.cos(theta)
        phi = np.arctan2(v, u)
        wobble = 1 + 0.12 * np.sin(3 * phi + rng.uniform(0, 6.3)) + 0.06 * np.sin(5 * phi + rng.uniform(0, 6.3))
        r = np.sqrt((u / rx) ** 2 + (v / ry) ** 2) / wobble
        inside = r < 1
        frag[y0:y1, x0:x1][inside] = f
        xs = dx[inside]
        ranks = np.empty(len(xs), np.float32)
        ranks[np.argsort(xs, kind="stable")] = np.arange(len(xs), dtype=np.float32) / max(1, len(xs) - 1)
        xrank[y0:y1, x0:x1][inside] = ranks
    return frag, xrank


def _subclones(frag: np.ndarray, tumour: np.ndarray, large_on_top: bool) -> np.ndarray:
    """Per pixel: in the large-nucleus subclone. In each fragment the tumour is split at its median row
    (slide axes), the large subclone above it when ``large_on_top``, else below; equal areas."""
    large = np.zeros(frag.shape, bool)
    yy = np.broadcast_to(np.arange(frag.shape[0])[:, None], frag.shape)
    for f in np.unique(frag[tumour]):
        m = tumour & (frag == f)
        ys = yy[m]
        ranks = np.empty(len(ys), np.float32)
        ranks[np.argsort(ys, kind="stable")] = np.arange(len(ys), dtype=np.float32) / max(1, len(ys) - 1)
        large[m] = ranks < 0.5 if large_on_top else ranks >= 0.5
    return large


def tissue_classes(rng: np.random.Generator, size: int, n_fragments: int, pattern: str, programs: np.ndarray,
                   instability: str = "low", discordant_fragments: float = 0.0,
                   fraction_noise: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-pixel class index (0 background, 1 + index in ``CLASSES``), fragment id and tumour cell kind
    (1 large, 0 small, -1 not tumour), ``[size, size]``; the fragments that put the tumour on the other side."""
    small = size // GEOMETRY_SCALE
    frag, xrank = fragment_geometry(rng, small, n_fragments)
    immune, prolif, stroma, hypoxia = programs
    noise = rng.normal(0, fraction_noise, 3)
    f_tumour = float(np.clip(0.45 + 0.08 * prolif - 0.06 * stroma + noise[0], 0.25, 0.65))
    flipped = rng.random(n_fragments) < discordant_fragments  # fragments with the tumour on the other side
    left = np.where(flipped, pattern != PATTERNS[0], pattern == PATTERNS[0])
    left_px = left[np.clip(frag, 0, None)]
    # left: the leftmost f_tumour of every fragment's area; right: the rightmost part of the same area
    tumour = (frag >= 0) & np.where(left_px, xrank < f_tumour, xrank > 1 - f_tumour)
    blob = cv2.resize(rng.random((small // 8, small // 8)).astype(np.float32), (small, small), interpolation=cv2.INTER_CUBIC)
    immune_frac = float(np.clip(0.15 + 0.08 * immune + 0.6 * noise[1], 0.02, 0.4))
    necrosis_frac = float(np.clip(0.05 + 0.06 * hypoxia + 0.4 * noise[2], 0.0, 0.3))
    large = _subclones(frag, tumour, large_on_top=instability == "high")
    cls = np.zeros((small, small), np.uint8)
    cls[frag >= 0] = 1 + CLASSES.index("stroma")
    cls[tumour] = 1 + CLASSES.index("tumour")
    cls[(frag >= 0) & ~tumour & (blob < immune_frac)] = 1 + CLASSES.index("immune")
    cls[tumour & (blob > 1 - necrosis_frac)] = 1 + CLASSES.index("necrosis")
    kind = np.where(cls == 1 + CLASSES.index("tumour"), large.astype(np.int8), np.int8(-1))
    up = (size, size)
    return (cv2.resize(cls, up, interpolation=cv2.INTER_NEAREST),
            cv2.resize(frag, up, interpolation=cv2.INTER_NEAREST),
            cv2.resize(kind, up, interpolation=cv2.INTER_NEAREST), flipped)


def render_slide(rng: np.random.Generator, bank: dict[tuple[str, int, str], np.ndarray], ctype: str, sub: int, pattern: str, programs: np.ndarray, size: int,
                 n_fragments: int, instability: str = "low", params: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
    """RGB ``[size, size, 3]`` slide and its per-pixel fragment map.

    ``params``: ``discordant_fragments`` and ``fraction_noise`` (:attr:`SynthConfig.slide_params`; default none),
    and ``mucin`` (the paired-trait cue: pale mucin lakes in about 30 % of the stroma; default off).
    """
    p = params or {}
    cls, frag, kind, _ = tissue_classes(rng, size, n_fragments, pattern, programs, instability,
                                        p.get("discordant_fragments", 0.0), p.get("fraction_noise", 0.0))
    img = np.empty((size, size, 3), np.uint8)
    img[:] = np.array([242, 240, 244], np.uint8)
    reps = (size // BANK + 2, size // BANK + 2, 1)
    layers = [(f"tumour_{TUMOUR_CELLS[0]}", kind == 1), (f"tumour_{TUMOUR_CELLS[1]}", kind == 0)]
    layers += [(name, cls == k + 1) for k, name in enumerate(CLASSES) if name != "tumour"]
    for name, where in layers:
        mask = where.view(np.uint8)
        if not mask.any():
            continue
        oy, ox = rng.integers(0, BANK, 2)
        tile = np.ascontiguousarray(np.tile(bank[(ctype, sub, name)], reps)[oy:oy + size, ox:ox + size])
        cv2.copyTo(tile, mask, img)
    if p.get("mucin"):
        _paint_mucin(rng, img, cls == 1 + CLASSES.index("stroma"))
    # scanner/stain variation (a batch effect unrelated to biology): per-channel gain and gamma
    gain = rng.normal(1.0, 0.06, 3)
    gamma = rng.uniform(0.75, 1.3, 3)
    lut = np.stack([np.clip(255 * gain[c] * (np.arange(256) / 255.0) ** gamma[c], 0, 255) for c in range(3)], 1)
    stained = np.stack([cv2.LUT(img[..., c], lut[:, c].astype(np.uint8)) for c in range(3)], -1)
    cv2.copyTo(stained, (cls > 0).view(np.uint8), img)  # the glass stays as it is
    noise = cv2.resize(rng.normal(0, 3, (size // 8, size // 8)).astype(np.float32), (size, size))
    img = cv2.add(img, cv2.merge([noise] * 3), dtype=cv2.CV_8U)
    return img, frag


MUCIN_FRACTION = 0.3  # of the stroma, with the paired-trait cue


def _paint_mucin(rng: np.random.Generator, img: np.ndarray, stroma: np.ndarray) -> None:
    """Pale, faintly blue mucin lakes over about :data:`MUCIN_FRACTION` of the ``stroma`` pixels of ``img`` (in place)."""
    size = img.shape[0]
    blob = cv2.resize(rng.random((max(2, size // 64),) * 2).astype(np.float32), (size, size),
                      interpolation=cv2.INTER_CUBIC)
    cut = np.quantile(blob[stroma], MUCIN_FRACTION) if stroma.any() else 0.0
    lake = stroma & (blob < cut)
    h = 0.12 + 0.04 * rng.random((size, size)).astype(np.float32)
    e = 0.05 + 0.02 * rng.random((size, size)).astype(np.float32)
    cv2.copyTo(_to_rgb(h, e), lake.view(np.uint8), img)


def write_pyramidal_tiff(path: Path, rgb: np.ndarray, mpp: float, magnification: float = 20.0,
                         downsamples: Sequence[int] = (1, 4), tile: int = 256) -> None:
    """Write a tiled, JPEG-compressed pyramidal TIFF (one page per level) with mpp, atomically."""
    desc = f"pathalign synthetic slide|AppMag = {magnification:g}|MPP = {mpp:g}"
    with atomic_path(path) as tmp, tifffile.TiffWriter(tmp, bigtiff=False) as tw:
        for i, ds in enumerate(downsamples):
            level = rgb if ds == 1 else cv2.resize(rgb, (rgb.shape[1] // ds, rgb.shape[0] // ds), interpolation=cv2.INTER_AREA)
            res = 1e4 / (mpp * ds)  # px per cm
            tw.write(level, tile=(tile, tile), photometric="rgb", compression="jpeg", compressionargs={"level": 90},
                     resolution=(res, res), resolutionunit="CENTIMETER", description=desc if i == 0 else None,
                     subfiletype=0 if i == 0 else 1, metadata=None)
