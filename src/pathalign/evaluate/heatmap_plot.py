"""Heatmaps drawn over the slide thumbnail: patch squares coloured by score, fragment outlines, a colour bar."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..io.heatmaps import SlideHeatmaps


def fragment_outline_segments(coords: np.ndarray, fragment: np.ndarray, size: float) -> np.ndarray:
    """The outline of every fragment on the patch grid: the patch edges whose neighbour across the edge is not a
    patch of the same fragment.

    Args:
        coords: ``[N, 2]`` level-0 top-left corners (patches of one grid, step ``size``).
        fragment: ``[N]`` fragment ids.
        size: patch side in level-0 px.

    Returns:
        ``[E, 2, 2]`` level-0 segments ``((x0, y0), (x1, y1))``.
    """
    cell = {(int(round(x / size)), int(round(y / size))): int(f) for (x, y), f in zip(coords, fragment)}
    segs = []
    for (i, j), f in cell.items():
        x, y = i * size, j * size
        for (di, dj), seg in (((-1, 0), ((x, y), (x, y + size))), ((1, 0), ((x + size, y), (x + size, y + size))),
                              ((0, -1), ((x, y), (x + size, y))), ((0, 1), ((x, y + size), (x + size, y + size)))):
            if cell.get((i + di, j + dj)) != f:
                segs.append(seg)
    return np.asarray(segs, dtype=np.float64).reshape(-1, 2, 2)


def plot_heatmap(hm: SlideHeatmaps, score: str, out_png: str | Path, slide_path: str | Path | None = None,
                 max_side: int = 1000, alpha: float = 0.6) -> Path:
    """Draw one score of ``hm`` over the slide's thumbnail (or a blank canvas without ``slide_path``).

    Args:
        hm: the slide's heatmaps.
        score: a key of ``hm.scores``.
        out_png: the PNG to write.
        slide_path: the slide file, for the thumbnail.
        max_side: thumbnail size in px.
        alpha: opacity of the patch colours.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.collections import LineCollection, PatchCollection
    from matplotlib.colors import Normalize
    from matplotlib.patches import Rectangle

    values = hm.scores[score]
    size = hm.patch_size_level0
    if slide_path is not None:
        from ..slides.reader import open_slide
        from ..slides.segment import low_res_image

        with open_slide(slide_path) as slide:
            w0, h0 = slide.dimensions
            img, ds = low_res_image(slide, slide.mpp * max(w0, h0) / max_side)
    else:
        w0, h0 = (hm.coords.max(0) + size).astype(int) if len(hm.coords) else (size, size)
        ds = max(w0, h0) / max_side
        img = np.full((int(np.ceil(h0 / ds)), int(np.ceil(w0 / ds)), 3), 255, np.uint8)
    fig, ax = plt.subplots(figsize=(8, 8 * img.shape[0] / img.shape[1]))
    ax.imshow(img)
    finite = np.isfinite(values)
    norm = Normalize(float(values[finite].min()) if finite.any() else 0.0,
                     float(values[finite].max()) if finite.any() else 1.0)
    squares = [Rectangle((x / ds, y / ds), size / ds, size / ds) for (x, y) in hm.coords[finite]]
    patches = PatchCollection(squares, cmap="viridis", norm=norm, alpha=alpha, linewidths=0)
    patches.set_array(values[finite])
    ax.add_collection(patches)
    outline = fragment_outline_segments(hm.coords, hm.fragment, size) / ds
    ax.add_collection(LineCollection(outline, colors="white", linewidths=0.8))
    fig.colorbar(patches, ax=ax, fraction=0.04, pad=0.02, label=score)
    ax.set_title(f"{hm.slide_id}: {score}", fontsize=9)
    ax.axis("off")
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return Path(out_png)
