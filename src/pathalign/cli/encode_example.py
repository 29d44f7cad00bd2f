"""Encode a randomly generated slide with the F-RoPE slide encoder and print what comes out.

A smoke test of the install: no data or weights needed.
"""
from __future__ import annotations

import argparse
import time

from .options import include, seed_option


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="tiny", help="slide-encoder preset (tiny, small, exaone-path-2.5)")
    p.add_argument("--patches", type=int, default=4000, help="patches in the random slide")
    p.add_argument("--fragments", type=int, default=6, help="tissue fragments in the random slide")
    p.add_argument("--weights", default=None, help="published EXAONE Path 2.5 slide-encoder checkpoint to load instead")
    include(p, seed_option("seed of the random weights and the random slide"))


def run(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from pathalign import SlideEncoder

    torch.manual_seed(args.seed)
    enc = SlideEncoder.from_exaone_path(args.weights) if args.weights else SlideEncoder.from_preset(args.preset).eval()
    rng = np.random.default_rng(args.seed)
    c = enc.config.input_dim
    frag = rng.integers(0, args.fragments, args.patches)
    coords = np.stack([rng.integers(0, 200, args.patches) + 300 * frag, rng.integers(0, 200, args.patches)], 1) * 256
    feats = rng.standard_normal((args.patches, c)).astype(np.float32)
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = enc.encode(feats, coords, frag)
    dt = time.perf_counter() - t0
    cfg = enc.config
    print(f"slide encoder: dim {cfg.dim}, depth {cfg.depth}, heads {cfg.num_heads}, registers {cfg.n_registers}, "
          f"input dim {cfg.input_dim}")
    print(f"slide of {args.patches} patches in {len(np.unique(frag))} fragments encoded in {dt:.2f} s")
    print(f"slide_embedding {tuple(out['slide_embedding'].shape)}  patch_tokens {tuple(out['patch_tokens'].shape)}")
    print("first values:", np.round(out["slide_embedding"][:6].numpy(), 4))
    return 0
