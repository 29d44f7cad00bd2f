"""Real pyramidal tiled TIFFs built on the fly for the slide-pipeline tests."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import tifffile

BACKGROUND = (245, 243, 246)


def blob_slide(path: Path, size=(3072, 2048), mpp: float | None = 0.5, downsamples=(1, 4), compression="zlib",
               blobs=None, seed: int = 0):
    """A slide with separate elliptical tissue blobs (the first one with a hole).

    Returns ``(path, label)`` where ``label`` ``int16 [H, W]`` is the blob index per pixel (-1 = background or hole).
    """
    w, h = size
    rng = np.random.default_rng(seed)
    if blobs is None:
        blobs = [((w * 0.22, h * 0.3), (w * 0.14, h * 0.2)), ((w * 0.7, h * 0.28), (w * 0.12, h * 0.15)),
                 ((w * 0.45, h * 0.75), (w * 0.2, h * 0.14))]
    label = np.full((h, w), -1, np.int16)
    for i, (c, ax) in enumerate(blobs):
        cv2.ellipse(label, (int(c[0]), int(c[1])), (int(ax[0]), int(ax[1])), 0, 0, 360, i, -1)
    if blobs:
        (cx, cy), (ax, ay) = blobs[0]
        cv2.circle(label, (int(cx), int(cy)), int(min(ax, ay) * 0.45), -1, -1)  # the hole
    img = np.empty((h, w, 3), np.uint8)
    img[:] = BACKGROUND
    tissue = label >= 0
    noise = rng.integers(0, 40, (h, w), dtype=np.uint8)
    img[tissue] = np.stack([180 - noise[tissue], 80 + noise[tissue] // 2, 170 - noise[tissue] // 3], -1)
    with tifffile.TiffWriter(path) as tw:
        for i, ds in enumerate(downsamples):
            level = img if ds == 1 else cv2.resize(img, (w // ds, h // ds), interpolation=cv2.INTER_AREA)
            kw = {}
            if mpp is not None:
                kw = dict(resolution=(1e4 / (mpp * ds), 1e4 / (mpp * ds)), resolutionunit="CENTIMETER")
            tw.write(level, tile=(256, 256), photometric="rgb", compression=compression, subfiletype=0 if i == 0 else 1,
                     metadata=None, **kw)
    return path, label
