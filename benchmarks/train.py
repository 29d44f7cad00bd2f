"""Training throughput: steps/s, peak memory and the share of step time spent waiting for data.

Builds a cohort of random patch features (``--tokens`` per slide, ``--feature-dim`` dims) and
molecular matrices, then trains ``--preset`` for ``--steps`` steps with ``--workers`` loader
processes. CPU by default (tiny preset); on a GPU:

    python benchmarks/train.py --device cuda --preset exaone-path-2.5 --batch-size 64 --tokens 8192 --feature-dim 768
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd


def fake_cohort(root: Path, patients: int, tokens: int, dim: int, seed: int = 0) -> Path:
    """A cohort folder with random features files and molecular matrices (every patient has everything)."""
    from pathalign.cohort import CohortSources, build_cohort
    from pathalign.io.features import write_patch_file

    rng = np.random.default_rng(seed)
    feats_dir = root / "features"
    cases = [f"TCGA-BM-{i:04d}" for i in range(patients)]
    side = int(np.ceil(np.sqrt(tokens)))
    for c in cases:
        cells = rng.choice(side * side, tokens, replace=False)
        coords = np.stack([cells % side, cells // side], 1) * 256
        write_patch_file(feats_dir / f"{c}-DX1.h5", coords, (cells % side) // max(1, side // 8),
                         {"patch_size_level0": 256}, rng.standard_normal((tokens, dim)).astype(np.float16))
    pd.DataFrame({"case_id": cases, "label": rng.choice(["a", "b"], patients)}).to_csv(root / "clin.tsv", sep="\t", index=False)
    pd.DataFrame({"slide_id": [f"{c}-DX1" for c in cases], "case_id": cases}).to_csv(root / "slides.tsv", sep="\t", index=False)
    samples = [f"{c}-01A" for c in cases]
    pd.DataFrame(rng.gamma(2, 20, (500, patients)), index=[f"G{i}" for i in range(500)], columns=samples).rename_axis("gene").to_csv(root / "rna.tsv", sep="\t")
    pd.DataFrame(rng.integers(-2, 3, (200, patients)), index=[f"C{i}" for i in range(200)], columns=samples).rename_axis("gene").to_csv(root / "cnv.tsv", sep="\t")
    out = root / "cohort"
    build_cohort(CohortSources(clinical=str(root / "clin.tsv"), slides=str(root / "slides.tsv"), features=str(feats_dir),
                               rna=str(root / "rna.tsv"), cnv=str(root / "cnv.tsv")), out, progress=False)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="tiny")
    p.add_argument("--device", default="cpu")
    p.add_argument("--patients", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--tokens", type=int, default=512, help="patches per slide (all used: max_tokens = tokens)")
    p.add_argument("--feature-dim", type=int, default=768)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--workers", default="0,2", help="comma-separated loader process counts to compare")
    args = p.parse_args(argv)

    import torch

    from pathalign.train.trainer import TrainConfig, Trainer

    root = Path(tempfile.mkdtemp())
    t0 = time.perf_counter()
    cohort = fake_cohort(root, args.patients, args.tokens, args.feature_dim)
    print(f"# training benchmark: preset {args.preset}, device {args.device}, batch {args.batch_size}, "
          f"{args.tokens} tokens/slide, feature dim {args.feature_dim}, {args.steps} steps; {os.cpu_count()} cpus, "
          f"torch {torch.__version__}, {platform.machine()} (cohort built in {time.perf_counter() - t0:.0f} s)")
    print("| workers | steps/s | median step s | data wait | peak memory MiB |\n|---|---|---|---|---|")
    for w in map(int, args.workers.split(",")):
        cfg = TrainConfig.from_preset(args.preset, steps=args.steps, batch_size=args.batch_size, max_tokens=args.tokens,
                                      workers=w, device=args.device, progress=False, checkpoint_every=10**9,
                                      val_fraction=0.0, stratify=None)
        if args.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        trainer = Trainer(cohort, root / f"run{w}", cfg)
        t0 = time.perf_counter()
        metrics = trainer.fit()
        dt = time.perf_counter() - t0
        log = pd.read_csv(root / f"run{w}" / "log.csv")
        warm = log.iloc[len(log) // 5:]
        peak = (torch.cuda.max_memory_allocated() if args.device.startswith("cuda")
                else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) / 2**20
        print(f"| {w} | {1 / warm.step_seconds.median():.2f} | {warm.step_seconds.median():.3f} | "
              f"{warm.data_wait.sum() / warm.step_seconds.sum():.1%} | {peak:.0f} |", flush=True)


if __name__ == "__main__":
    sys.exit(main())
