"""Training at the scale of a real cohort, simulated on this machine.

Phases (run in order; each training configuration runs in its own process so that its peak
memory is its own):

    python benchmarks/scale.py --root /tmp/scale/cohort write       # >= 2,000 slides + molecular tables
    python benchmarks/scale.py --root /tmp/scale/cohort train       # small preset, 0 and 2 workers
    python benchmarks/scale.py --root /tmp/scale/cohort gradcache   # global batch at fixed micro-batch
    python benchmarks/scale.py --root /tmp/scale/cohort checkpoint  # activation checkpointing
    python benchmarks/scale.py --root /tmp/scale/cohort clean

``write``: slide lengths are log-normal (median ``--median`` patches, sigma 0.5) with a tail of
0.5 % of the slides log-uniform up to ``--max-patches``; 768-dim float16 features written by
pathalign's own writer (so its chunk layout), 2-6 tissue fragments per slide; ~5 % of patients
have two slides; RNA (TPM) and CNV (GISTIC) tables for the patients, then ``cohort build``.
``train`` reports steps/s, the data-wait share and the memory (PSS of the trainer and its loader
workers, sampled each second) at the end of warm-up (``--warmup-fraction`` of the steps, default
half: the default feature cache, 5 % of RAM, fills during the first ~150 steps of 16 slides on the
default cohort, and memory is meant to be flat only once it is full), its maximum after, and the peak.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd

from fragment_layout import fragment_grid  # benchmarks/ is on sys.path when a script there runs

FEATURE_DIM = 768


# ---------------------------------------------------------------------------- cohort
def slide_lengths(n: int, median: int, max_patches: int, rng: np.random.Generator) -> np.ndarray:
    """Long-tailed patch counts: log-normal body, 0.5 % log-uniform tail up to ``max_patches``."""
    lengths = np.exp(rng.normal(np.log(median), 0.5, n))
    tail = rng.choice(n, max(1, n // 200), replace=False)
    lengths[tail] = np.exp(rng.uniform(np.log(max_patches / 2.5), np.log(max_patches), len(tail)))
    lengths[tail[0]] = max_patches
    return np.clip(lengths, 64, max_patches).astype(int)


def write_cohort(root: Path, n_slides: int, median: int, max_patches: int, seed: int = 0) -> dict:
    from pathalign.cohort import CohortSources, build_cohort
    from pathalign.io.features import write_patch_file

    rng = np.random.default_rng(seed)
    feats_dir = root / "features"
    feats_dir.mkdir(parents=True, exist_ok=True)
    lengths = slide_lengths(n_slides, median, max_patches, rng)
    n_patients = int(n_slides / 1.05)
    cases = [f"TCGA-SC-{i:04d}" for i in range(n_patients)]
    owner = np.concatenate([np.arange(n_patients), rng.choice(n_patients, n_slides - n_patients, replace=False)])
    pool = rng.standard_normal((1 << 16, FEATURE_DIM)).astype(np.float16)  # rows reused at random offsets
    slides = []
    t0 = time.perf_counter()
    for s, (n, p) in enumerate(zip(lengths, owner)):
        sid = f"{cases[p]}-01Z-00-DX{s:05d}"
        slides.append((sid, cases[p]))
        path = feats_dir / f"{sid}.h5"
        if path.is_file():
            continue
        n_frag = int(rng.integers(2, 7))
        sizes = np.diff(np.sort(np.concatenate([[0, n], rng.choice(np.arange(1, n), n_frag - 1, replace=False)])))
        coords, frag = fragment_grid(sizes, gap=4)
        start = int(rng.integers(0, len(pool)))
        feats = pool[(start + np.arange(n)) % len(pool)]
        write_patch_file(path, coords, frag, {"patch_size_level0": 256, "mpp": 0.5},
                         feats, {"encoder": "simulated"})
        if s % 200 == 0:
            print(f"  {s}/{n_slides} slides written ({time.perf_counter() - t0:.0f} s)", flush=True)
    pd.DataFrame({"case_id": cases, "cancer_type": rng.choice(["BRCA", "LUAD", "COAD"], n_patients)}).to_csv(
        root / "clinical.tsv", sep="\t", index=False)
    pd.DataFrame(slides, columns=["slide_id", "case_id"]).to_csv(root / "slides.tsv", sep="\t", index=False)
    samples = [f"{c}-01A" for c in cases]
    pd.DataFrame(rng.gamma(2, 20, (1000, n_patients)).astype(np.float32), index=[f"G{i}" for i in range(1000)],
                 columns=samples).rename_axis("gene").to_csv(root / "rna.tsv", sep="\t")
    pd.DataFrame(rng.integers(-2, 3, (300, n_patients)), index=[f"C{i}" for i in range(300)],
                 columns=samples).rename_axis("gene").to_csv(root / "cnv.tsv", sep="\t")
    build_cohort(CohortSources(clinical=str(root / "clinical.tsv"), slides=str(root / "slides.tsv"),
                               features=str(feats_dir), rna=str(root / "rna.tsv"), cnv=str(root / "cnv.tsv")),
                 root / "cohort", progress=False)
    disk = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    info = {"slides": n_slides, "patients": n_patients, "median_patches": int(np.median(lengths)),
            "p99_patches": int(np.percentile(lengths, 99)), "max_patches": int(lengths.max()),
            "total_patches": int(lengths.sum()), "disk_gb": disk / 1e9, "write_seconds": time.perf_counter() - t0}
    (root / "cohort_info.json").write_text(json.dumps(info, indent=1))
    return info


# ---------------------------------------------------------------------------- memory
def _pss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _children(pid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if int((d / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(d.name))
            except (OSError, IndexError, ValueError):
                pass
    return out


class MemorySampler(threading.Thread):
    """Samples (seconds, PSS MiB of this process + its children) every ``period`` s."""

    def __init__(self, period: float = 1.0):
        super().__init__(daemon=True)
        self.period, self.samples, self._stop_evt = period, [], threading.Event()
        self.t0 = time.perf_counter()

    def run(self):
        me = os.getpid()
        while not self._stop_evt.is_set():
            kib = _pss_kib(me) + sum(_pss_kib(c) for c in _children(me))
            self.samples.append((time.perf_counter() - self.t0, kib / 1024))
            self._stop_evt.wait(self.period)

    def stop(self):
        self._stop_evt.set()
        self.join()


# ---------------------------------------------------------------------------- one training run (child process)
def run_one(spec: dict) -> dict:
    import torch

    from pathalign.train.trainer import TrainConfig, Trainer

    torch.set_num_threads(spec.pop("threads", 1))  # a shared 2-core machine: 2 spinning threads stall
    warmup_fraction = float(spec.pop("warmup_fraction", 0.5))
    root, out = Path(spec.pop("root")), Path(spec.pop("out"))
    shutil.rmtree(out, ignore_errors=True)
    cfg = TrainConfig.from_preset(spec.pop("preset", "small"), progress=False, checkpoint_every=10**9,
                                  val_fraction=0.0, stratify=None, **spec)
    trainer = Trainer(root / "cohort", out, cfg)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    sampler = MemorySampler()
    sampler.start()
    t_fit = sampler.t0
    trainer.fit()
    sampler.stop()
    log = pd.read_csv(out / "log.csv")
    ends = np.cumsum(log.step_seconds.to_numpy())  # seconds since fit start at the end of each step
    fit_offset = t_fit - sampler.t0
    warm_steps = max(1, int(len(log) * warmup_fraction))
    warm = log.iloc[warm_steps:]
    t_warm = fit_offset + ends[warm_steps - 1]
    samples = np.array(sampler.samples)
    after = samples[samples[:, 0] >= t_warm, 1] if len(samples) else np.zeros(0)
    at_warm = samples[np.argmin(np.abs(samples[:, 0] - t_warm)), 1] if len(samples) else float("nan")
    stats = dict(trainer.data.reader.stats)
    res = {"steps": len(log), "warmup_steps": warm_steps, "step_ends_s": np.round(ends + fit_offset, 2).tolist(),
           "steps_per_s": 1 / warm.step_seconds.median(),
           "median_step_s": float(warm.step_seconds.median()),
           "data_wait": float(warm.data_wait.sum() / warm.step_seconds.sum()),
           "pss_warm_mib": float(at_warm), "pss_max_after_warm_mib": float(after.max()) if len(after) else float("nan"),
           "pss_peak_mib": float(samples[:, 1].max()) if len(samples) else float("nan"),
           "maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "rss_before_fit_mib": base,
           "reader_main": stats, "timeline": [(round(t, 1), round(m)) for t, m in sampler.samples]}
    shutil.rmtree(out, ignore_errors=True)
    return res


def _child(spec: dict, log_dir: Path, name: str, timeout: int) -> dict:
    spec_path = log_dir / f"{name}.spec.json"
    spec_path.write_text(json.dumps(spec))
    res_path = log_dir / f"{name}.json"
    cmd = [sys.executable, __file__, "_run", str(spec_path), str(res_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    (log_dir / f"{name}.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{proc.stderr[-3000:]}")
    return json.loads(res_path.read_text())


def _header(args, what: str) -> str:
    import torch

    info = json.loads((args.root / "cohort_info.json").read_text())
    return (f"# {what}: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {os.cpu_count()} cpus, "
            f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB RAM, torch {torch.__version__}, "
            f"{platform.machine()}; cohort {info['slides']} slides / {info['patients']} patients, patches median "
            f"{info['median_patches']}, p99 {info['p99_patches']}, max {info['max_patches']}, "
            f"{info['disk_gb']:.1f} GB on disk")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("phase", choices=["write", "train", "gradcache", "checkpoint", "clean", "_run"])
    p.add_argument("rest", nargs="*")
    p.add_argument("--root", type=Path, default=Path("/tmp/scale/cohort"))
    p.add_argument("--log-dir", type=Path, default=Path("/tmp/scale/logs"))
    p.add_argument("--slides", type=int, default=2000)
    p.add_argument("--median", type=int, default=4000)
    p.add_argument("--max-patches", type=int, default=50_000)
    p.add_argument("--preset", default="small")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--warmup-fraction", type=float, default=0.5,
                   help="train: share of the steps counted as warm-up (the feature cache fills during it)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument("--workers", default="0,2")
    p.add_argument("--feature-cache-mb", type=float, default=None)
    p.add_argument("--batches", default="16,64,256", help="gradcache: global batch sizes")
    p.add_argument("--micro-batch", type=int, default=16)
    p.add_argument("--plain-batches", default="16,32,64", help="gradcache: batch sizes run without caching")
    p.add_argument("--gc-steps", type=int, default=3)
    p.add_argument("--gc-max-tokens", type=int, default=128)
    p.add_argument("--ckpt-max-tokens", default="1024,4096")
    p.add_argument("--timeout", type=int, default=3600)
    args = p.parse_args(argv)
    if args.phase == "_run":
        res = run_one(json.loads(Path(args.rest[0]).read_text()))
        Path(args.rest[1]).write_text(json.dumps(res))
        return 0
    args.log_dir.mkdir(parents=True, exist_ok=True)
    if args.phase == "write":
        info = write_cohort(args.root, args.slides, args.median, args.max_patches)
        print(json.dumps(info))
        return 0
    if args.phase == "clean":
        shutil.rmtree(args.root, ignore_errors=True)
        print(f"removed {args.root}")
        return 0
    common = {"root": str(args.root), "preset": args.preset, "steps": args.steps, "batch_size": args.batch_size,
              "max_tokens": args.max_tokens, "feature_cache_mb": args.feature_cache_mb}
    if args.phase == "train":
        print(_header(args, f"scale benchmark, train: preset {args.preset}, batch {args.batch_size}, "
                            f"max_tokens {args.max_tokens}, {args.steps} steps"))
        print("| workers | steps/s | median step s | data wait | warm-up steps | PSS end of warm-up MiB | max PSS after MiB "
              "| growth | peak PSS MiB |")
        print("|---|---|---|---|---|---|---|---|---|", flush=True)
        for w in map(int, args.workers.split(",")):
            r = _child({**common, "workers": w, "out": str(args.root / f"run_w{w}"), "warmup_fraction": args.warmup_fraction},
                       args.log_dir, f"train_w{w}", args.timeout)
            growth = r["pss_max_after_warm_mib"] / r["pss_warm_mib"] - 1
            print(f"| {w} | {r['steps_per_s']:.2f} | {r['median_step_s']:.3f} | {r['data_wait']:.1%} | {r['warmup_steps']} | "
                  f"{r['pss_warm_mib']:.0f} | {r['pss_max_after_warm_mib']:.0f} | {growth:+.1%} | {r['pss_peak_mib']:.0f} |",
                  flush=True)
    elif args.phase == "gradcache":
        print(_header(args, f"scale benchmark, gradient caching: preset {args.preset}, max_tokens {args.gc_max_tokens}, "
                            f"{args.gc_steps} steps, 0 workers"))
        print("| global batch | micro-batch | s / step | peak RSS MiB | RSS before training MiB |\n|---|---|---|---|---|",
              flush=True)
        runs = [(b, None) for b in map(int, args.plain_batches.split(",")) if b] + \
               [(b, args.micro_batch) for b in map(int, args.batches.split(","))]
        for b, m in runs:
            spec = {**common, "steps": args.gc_steps, "batch_size": b, "max_tokens": args.gc_max_tokens, "workers": 0,
                    "micro_batch": m, "out": str(args.root / f"run_gc{b}_{m}")}
            r = _child(spec, args.log_dir, f"gc_b{b}_m{m}", args.timeout)
            print(f"| {b} | {m or 'none (one pass)'} | {r['median_step_s']:.2f} | {r['maxrss_mib']:.0f} | "
                  f"{r['rss_before_fit_mib']:.0f} |", flush=True)
    elif args.phase == "checkpoint":
        print(_header(args, f"scale benchmark, activation checkpointing: preset {args.preset}, batch {args.batch_size}, "
                            f"{args.gc_steps} steps, 0 workers"))
        print("| max_tokens | checkpointing | s / step | peak RSS MiB | RSS before training MiB |\n|---|---|---|---|---|",
              flush=True)
        for t in map(int, args.ckpt_max_tokens.split(",")):
            for on in (False, True):
                spec = {**common, "steps": args.gc_steps, "max_tokens": t, "workers": 0, "checkpoint_activations": on,
                        "out": str(args.root / f"run_ck{t}_{on}")}
                r = _child(spec, args.log_dir, f"ckpt_t{t}_{on}", args.timeout)
                print(f"| {t} | {'on' if on else 'off'} | {r['median_step_s']:.2f} | {r['maxrss_mib']:.0f} | "
                      f"{r['rss_before_fit_mib']:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
