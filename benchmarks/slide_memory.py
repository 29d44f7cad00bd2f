"""Peak memory of ``pathalign preprocess`` on a large, sparse pyramidal TIFF.

Writes a ``--size`` x ``--size`` px slide (default 80 000, 0.5 µm/px, levels 1, 4, 16, 64) whose
tissue is a few elliptical blobs: tiles without tissue are written empty (zero bytes), so the
file stays small on disk. Level 1 (4x) is exactly the segmentation resolution (2 µm/px), the case
that used to be read in one call. ``preprocess`` (segment, patch, extract with the built-in
encoder) then runs in a child process per source tree; its peak resident set comes from
``os.wait4``'s resource usage. Pass ``--src`` more than once to compare trees side by side
(e.g. a checkout of the previous code at a smaller ``--size``: the old code needs ~16 GB at 80k).

    python benchmarks/slide_memory.py [--size 80000] [--src src] [--src /path/to/old/src] [--stages segment,preprocess]
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile

BACKGROUND = (245, 243, 246)


def blobs_for(size: int) -> list[tuple[float, float, float, float]]:
    """Three tissue ellipses ``(cx, cy, ax, ay)`` in level-0 px, about 2 % of the slide's area."""
    return [(0.3 * size, 0.3 * size, 0.05 * size, 0.035 * size), (0.65 * size, 0.4 * size, 0.04 * size, 0.05 * size),
            (0.5 * size, 0.75 * size, 0.06 * size, 0.03 * size)]


def write_sparse_slide(path: Path, size: int, mpp: float = 0.5, tile: int = 256,
                       downsamples: tuple[int, ...] = (1, 4, 16, 64)) -> None:
    """A pyramidal JPEG BigTIFF; tiles outside every blob are empty (no bytes, transparent to OpenSlide)."""
    blobs = blobs_for(size)
    noise = np.random.default_rng(0).integers(0, 40, (tile, tile), dtype=np.uint8)
    tissue = np.stack([180 - noise, 80 + noise // 2, 170 - noise // 3], -1)  # [tile, tile, 3]

    def tiles(n: int, ds: int):
        for y in range(0, n, tile):
            for x in range(0, n, tile):
                # pixel centres of this tile in level-0 px
                xs = (x + np.arange(tile) + 0.5) * ds
                ys = (y + np.arange(tile) + 0.5) * ds
                inside = np.zeros((tile, tile), bool)
                for cx, cy, ax, ay in blobs:
                    if xs[-1] < cx - ax or xs[0] > cx + ax or ys[-1] < cy - ay or ys[0] > cy + ay:
                        continue
                    inside |= ((xs[None, :] - cx) / ax) ** 2 + ((ys[:, None] - cy) / ay) ** 2 <= 1
                if not inside.any() and (x, y) != (0, 0):  # (tifffile takes the dtype from the first tile)
                    yield None  # an empty tile: zero bytes on disk
                    continue
                t = np.empty((tile, tile, 3), np.uint8)
                t[:] = BACKGROUND
                t[inside] = tissue[inside]
                yield t

    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        for i, ds in enumerate(downsamples):
            n = size // ds
            tw.write(tiles(n, ds), shape=(n, n, 3), dtype=np.uint8, tile=(tile, tile), photometric="rgb",
                     compression="jpeg", resolution=(1e4 / (mpp * ds), 1e4 / (mpp * ds)),
                     resolutionunit="CENTIMETER", subfiletype=0 if i == 0 else 1, metadata=None)


def run_stage(src: Path, stage: str, slide: Path, out: Path) -> dict:
    """``pathalign <stage>`` on ``slide`` with ``src`` first on the path, in a fresh folder; its peak RSS."""
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": "2"}
    cmd = [sys.executable, "-m", "pathalign", stage, str(slide), "--out", str(out), "--quiet"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - t0
    summary = next((line for line in output.splitlines() if " slides: " in line), output[-300:])
    return {"src": str(src), "rc": proc.returncode, "peak_mib": usage.ru_maxrss / 1024, "seconds": seconds,
            "summary": summary.strip()}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=80_000, help="slide side in level-0 px (default 80000)")
    p.add_argument("--src", action="append", default=None, help="source tree(s) to measure (default: this repo's src)")
    p.add_argument("--stages", default="segment,preprocess",
                   help="commands to measure, each in a fresh process and folder (default segment,preprocess)")
    p.add_argument("--keep", default=None, help="write the slide and outputs here and keep them (default: a temp dir)")
    args = p.parse_args(argv)
    srcs = [Path(s).resolve() for s in (args.src or [Path(__file__).resolve().parents[1] / "src"])]
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="slide_memory_"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        slide = work / f"sparse_{args.size}.tiff"
        t0 = time.perf_counter()
        write_sparse_slide(slide, args.size)
        print(f"# slide: {args.size} x {args.size} px, 0.5 µm/px, levels 1/4/16/64, "
              f"{slide.stat().st_size / 2**20:.1f} MiB on disk, written in {time.perf_counter() - t0:.0f} s")
        print(f"# {os.cpu_count()} cpus, {platform.machine()}, python {platform.python_version()}, "
              f"{time.strftime('%Y-%m-%d')}")
        print("| source tree | command | rc | peak RSS MiB | seconds | summary |")
        print("|---|---|---|---|---|---|")
        for stage in args.stages.split(","):
            for k, src in enumerate(srcs):
                out = work / f"out_{stage}_{k}"
                r = run_stage(src, stage, slide, out)
                shutil.rmtree(out, ignore_errors=True)
                print(f"| {r['src']} | {stage} | {r['rc']} | {r['peak_mib']:.0f} | {r['seconds']:.1f} | {r['summary']} |",
                      flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
