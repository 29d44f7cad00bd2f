"""Patch reading and feature-extraction throughput on a generated 20k x 20k-pixel slide.

Compares a plain serial loop of ``read_region`` per patch (how the published extraction script
reads) with pathalign's DataLoader reading (0 and 2 workers), reading alone and reading + the
built-in encoder. ``--device cuda`` also measures a ViT-B/14 (the EXAONE Path 2.5 patch-encoder
architecture, random weights) on the GPU.

    python benchmarks/extract.py [--size 20000] [--patches 2000] [--device cuda]
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile


def write_big_slide(path: Path, size: int, mpp: float = 0.5, tile: int = 256) -> None:
    """A pyramidal JPEG TIFF of ``size`` x ``size`` px, tissue everywhere, written tile by tile."""
    import cv2

    from pathalign.synth.slides import render_slide, texture_bank

    rng = np.random.default_rng(0)
    src, _ = render_slide(rng, texture_bank(0), "BRCA", 1, "left", np.zeros(4), 2048, 1)
    src = cv2.resize(src[512:1536, 512:1536], (2048, 2048))  # tissue only

    def tiles(level_size: int, ds: int):
        img = src if ds == 1 else cv2.resize(src, (2048 // ds, 2048 // ds), interpolation=cv2.INTER_AREA)
        h = img.shape[0]
        for y in range(0, level_size, tile):
            for x in range(0, level_size, tile):
                yy, xx = (y % h), (x % h)
                t = np.take(np.take(img, np.arange(yy, yy + tile) % h, axis=0), np.arange(xx, xx + tile) % h, axis=1)
                yield t

    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        for i, ds in enumerate((1, 4, 16)):
            n = size // ds
            n -= n % tile
            tw.write(tiles(n, ds), shape=(n, n, 3), dtype=np.uint8, tile=(tile, tile), photometric="rgb",
                     compression="jpeg", resolution=(1e4 / (mpp * ds), 1e4 / (mpp * ds)), resolutionunit="CENTIMETER",
                     subfiletype=0 if i == 0 else 1, metadata=None)


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=20000, help="slide side in px (default 20000)")
    p.add_argument("--patches", type=int, default=2000, help="patches read per measurement")
    p.add_argument("--patch-size", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--slide", default=None, help="reuse this generated slide")
    args = p.parse_args(argv)

    import torch

    from pathalign.slides.extract import PatchDataset, extract_features
    from pathalign.slides.patch_encoders import build_patch_encoder
    from pathalign.slides.reader import open_slide

    tmp = Path(tempfile.mkdtemp())
    slide_path = Path(args.slide) if args.slide else tmp / "big.tiff"
    if not slide_path.is_file():
        t0 = time.perf_counter()
        write_big_slide(slide_path, args.size)
        print(f"# wrote {slide_path} ({slide_path.stat().st_size / 2**20:.0f} MiB) in {time.perf_counter() - t0:.0f} s")
    ps = args.patch_size
    n_side = args.size // ps
    rng = np.random.default_rng(0)
    cells = rng.choice(n_side * n_side, size=min(args.patches, n_side * n_side), replace=False)
    coords = np.stack([cells % n_side, cells // n_side], 1) * ps
    n = len(coords)

    def serial():
        with open_slide(slide_path, "openslide") as s:
            for x, y in coords:
                s.read_region((int(x), int(y)), 0, (ps, ps))

    rows = []
    print(f"# extraction benchmark: {args.size}x{args.size} px slide, {n} random patches of {ps} px, "
          f"{os.cpu_count()} cpus, torch {torch.__version__}, {platform.machine()}; median of {args.repeats}")
    t = timed(serial, args.repeats)
    rows.append(("serial read_region loop (published style)", 0, n / t))
    enc = build_patch_encoder("pathalign-stats", device=args.device)
    for workers in (0, 2):
        ds = PatchDataset(slide_path, coords, 0, ps, ps, "openslide")

        def read_only():
            loader = torch.utils.data.DataLoader(ds, batch_size=args.batch_size, num_workers=workers)
            for _ in loader:
                pass

        rows.append(("DataLoader reading", workers, n / timed(read_only, args.repeats)))
        rows.append(("reading + pathalign-stats encoder", workers,
                     n / timed(lambda: extract_features(enc, ds, args.batch_size, workers, args.device, progress=False),
                               args.repeats)))
    if args.device.startswith("cuda"):
        vit = build_patch_encoder("exaone-path-2.5", device=args.device, pretrained=False)
        for workers in (2, 8):
            ds = PatchDataset(slide_path, coords, 0, ps, ps, "openslide")
            rows.append(("reading + ViT-B/14 (bf16)", workers,
                         n / timed(lambda: extract_features(vit, ds, args.batch_size, workers, args.device,
                                                            progress=False), args.repeats)))
    print("| path | workers | patches/s |\n|---|---|---|")
    for name, w, rate in rows:
        print(f"| {name} | {w} | {rate:.0f} |")
    base = rows[0][2]
    best_read = max(r for name, w, r in rows if name == "DataLoader reading")
    print(f"\nparallel reading vs serial loop: {best_read / base:.2f}x")


if __name__ == "__main__":
    sys.exit(main())
