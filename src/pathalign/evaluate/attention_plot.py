"""Attention of one RoPE block from a chosen patch, drawn over the slide thumbnail with fragment outlines.

The weights are computed exactly as the block computes them (same rotation, same segment mask),
for the one query row, so the picture is a visual check of the fragment mask: every patch of
another fragment must get zero attention.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..models.slide_encoder import SlideEncoder


def rope_attention(encoder: SlideEncoder, features: torch.Tensor | np.ndarray, coords: torch.Tensor | np.ndarray,
                   fragment: torch.Tensor | np.ndarray | None, query: int, block: int | None = None) -> np.ndarray:
    """Head-averaged attention ``[N]`` (input order) of patch ``query`` in RoPE block ``block`` (default: the first)."""
    cfg = encoder.config
    rope_blocks = [i for i, b in enumerate(encoder.blocks) if b.rope_block]
    if not rope_blocks:
        raise ValueError("the encoder has no RoPE block")
    block = rope_blocks[0] if block is None else block
    packed = encoder.pack([(features, coords, fragment)])
    with torch.no_grad():
        x, rope, segs = encoder.run_blocks(packed, stop=block)
        blk = encoder.blocks[block]
        q, k, _ = blk.attn.qkv_rotated(blk.norm1(x), rope)  # [T,H,Dh]
        d = x.shape[1]
        order = packed.order[0]
        slot = int(packed.patch_slots[int(np.flatnonzero(order == query)[0])])
        ids = segs.ids(x.device)
        logits = torch.einsum("hd,thd->ht", q[slot], k) / (d // cfg.num_heads) ** 0.5  # [H, T]
        logits = logits.masked_fill(ids[None, :] != ids[slot], float("-inf"))
        attn = F.softmax(logits, dim=-1).mean(0)  # [T]
    packed_attn = attn[packed.patch_slots].cpu().numpy()
    out = np.empty_like(packed_attn)
    out[order] = packed_attn
    return out


def plot_attention(slide_path: str | Path, geojson: str | Path, features_file: str | Path, encoder: SlideEncoder,
                   out_png: str | Path, query: int | None = None,
                   max_side: int = 900) -> dict:
    """Draw the attention of one RoPE block from patch ``query`` (default: a central patch of the largest fragment)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..io.features import read_patch_features
    from ..slides.reader import open_slide
    from ..io.tissue import read_geojson
    from ..slides.segment import low_res_image

    pf = read_patch_features(features_file)
    feats, coords, fragment = (torch.from_numpy(a) for a in pf.as_inputs())
    if query is None:
        big = np.bincount(pf.fragment).argmax()
        members = np.flatnonzero(pf.fragment == big)
        centre = pf.coords[members].mean(0)
        query = int(members[np.argmin(np.linalg.norm(pf.coords[members] - centre, axis=1))])
    attn = rope_attention(encoder, feats, coords, fragment, query)
    with open_slide(slide_path) as slide:
        w0, h0 = slide.dimensions
        img, ds = low_res_image(slide, slide.mpp * max(w0, h0) / max_side)
    size = float(pf.attrs["patch_size_level0"])
    fig, ax = plt.subplots(figsize=(7, 7 * img.shape[0] / img.shape[1]))
    ax.imshow(img)
    vmax = attn.max()
    cmap = plt.get_cmap("inferno")
    for (x, y), a in zip(pf.coords, attn):
        if a <= 0:  # masked out (another fragment): leave the tissue visible
            continue
        ax.add_patch(plt.Rectangle((x / ds, y / ds), size / ds, size / ds, color=cmap(a / vmax), alpha=0.65, lw=0))
    qx, qy = pf.coords[query]
    ax.add_patch(plt.Rectangle((qx / ds, qy / ds), size / ds, size / ds, fill=False, ec="cyan", lw=2))
    for f in read_geojson(geojson):
        ring = np.vstack([f.exterior, f.exterior[:1]]) / ds
        ax.plot(ring[:, 0], ring[:, 1], color="lime", lw=1.2)
    outside = float(attn[pf.fragment != pf.fragment[query]].sum())
    ax.set_title(f"RoPE-block attention from the cyan patch (outside its fragment: {outside:.2e})", fontsize=9)
    ax.axis("off")
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return {"query": query, "attention_outside_fragment": outside}
