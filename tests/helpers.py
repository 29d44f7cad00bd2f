"""Random slide inputs for tests."""
from __future__ import annotations

import numpy as np
import torch


def random_slide(rng: np.random.Generator, n: int, c: int, n_fragments: int, grid: int = 256):
    """A slide of ``n`` patches on a grid, split into ``n_fragments`` spatially separate fragments.

    Returns ``(features float32 [n,c], coords int64 [n,2], fragment int64 [n])``; fragment ids are
    arbitrary (non-contiguous) integers and the patch order is shuffled.
    """
    sizes = np.full(n_fragments, n // n_fragments)
    sizes[: n % n_fragments] += 1
    coords, frag = [], []
    ids = rng.choice(10_000, size=n_fragments, replace=False)
    for f, size in enumerate(sizes):
        side = int(np.ceil(np.sqrt(size)))
        cells = rng.choice(side * side, size=size, replace=False)
        xy = np.stack([cells % side, cells // side], 1) * grid
        xy += np.array([f * (side + 3) * grid, rng.integers(0, 40) * grid])
        coords.append(xy)
        frag.append(np.full(size, ids[f]))
    coords = np.concatenate(coords).astype(np.int64)
    frag = np.concatenate(frag).astype(np.int64)
    perm = rng.permutation(n)
    feats = rng.standard_normal((n, c)).astype(np.float32)
    return torch.from_numpy(feats), torch.from_numpy(coords[perm]), torch.from_numpy(frag[perm])
