"""Patch coordinates for simulated slides: each fragment a square patch grid, fragments side by side."""
from __future__ import annotations

import numpy as np


def fragment_grid(sizes: np.ndarray, gap: int, patch: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Level-0 coords ``[N, 2]`` and fragment ids ``[N]`` for fragments of ``sizes`` patches.

    Each fragment fills a square grid row by row; fragments are placed left to right, ``gap``
    empty cells apart, so no two fragments touch.
    """
    coords, frag, x0 = [], [], 0
    for f, size in enumerate(sizes):
        side = int(np.ceil(np.sqrt(size)))
        cells = np.arange(size)
        coords.append(np.stack([x0 + cells % side, cells // side], 1) * patch)
        frag.append(np.full(size, f))
        x0 += side + gap
    return np.concatenate(coords), np.concatenate(frag)
