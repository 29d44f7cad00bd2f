"""Wide molecular tables: ``cohort build`` time, ``train`` start-up time and peak memory by width.

For each width a synthetic cohort is made in ``--work`` (default ``/tmp/pathalign_wide_tables``):
a wide modality (RNA TPM for up to 100,000 features, methylation beta values above: 485,577 is
the 450k array's probe count) plus a 500-gene copy-number table for the same patients (training
needs two modalities per patient), written features x samples as Parquet (as TCGA ships them).
Each command runs in its own process under ``/usr/bin/time`` (wall seconds, peak resident set):

* build: ``pathalign cohort build --rna|--methylation WIDE --cnv CNV --cnv-kind log2``
* train: ``pathalign train --steps 1`` on both modalities (``--diagnostics-every 0``): the
  whole run, so an upper bound on the start-up to step 1; ``step 1 s`` is the step itself
  (``log.csv``), so start-up = train − step 1 − the end-of-run export.

``--baseline-src DIR`` runs the same commands also with the pathalign source tree ``DIR`` (e.g.
an older checkout) for comparison. Run alone, with ``OMP_NUM_THREADS=1``::

    OMP_NUM_THREADS=1 python benchmarks/wide_tables.py --widths 20000,60000,485577 --patients 1000,1000,300
"""
from __future__ import annotations

import argparse
import csv
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

SRC = Path(__file__).resolve().parents[1] / "src"
CNV_GENES = 500


def make_inputs(work: Path, width: int, patients: int, seed: int = 0) -> tuple[str, Path, Path]:
    """The wide table and the CNV table (features x samples Parquet); returns (modality, wide, cnv)."""
    rng = np.random.default_rng([seed, width, patients])
    samples = [f"TCGA-W{i // 10000}-{i % 10000:04d}-01A" for i in range(patients)]
    modality = "rna" if width <= 100_000 else "methylation"
    wide = work / f"{modality}_{width}x{patients}.parquet"
    cnv = work / f"cnv_{patients}.parquet"
    if not wide.is_file():
        if modality == "rna":
            values = rng.gamma(0.7, 30.0, (width, patients)).astype(np.float32)  # [features, samples]
            prefix = "ENSG"
        else:
            values = rng.random((width, patients), dtype=np.float32)
            prefix = "cg"
        values[rng.random(values.shape, dtype=np.float32) < 0.01] = np.nan
        df = pd.DataFrame(values, columns=samples, copy=False)
        df.insert(0, "feature", [f"{prefix}{j:08d}" for j in range(width)])
        df.to_parquet(wide, index=False)
        del df, values
    if not cnv.is_file():
        df = pd.DataFrame(rng.normal(0, 0.5, (CNV_GENES, patients)).astype(np.float32), columns=samples)
        df.insert(0, "gene", [f"GENE{j}" for j in range(CNV_GENES)])
        df.to_parquet(cnv, index=False)
    return modality, wide, cnv


def timed(cmd: list[str], src: Path, log: Path) -> tuple[float, float]:
    """Run ``cmd`` with ``src`` on PYTHONPATH under /usr/bin/time; returns (wall s, peak RSS GiB)."""
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run(["/usr/bin/time", "-f", "%e %M", *cmd], env=env, capture_output=True, text=True)
    log.write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    wall, kib = proc.stderr.strip().splitlines()[-1].split()
    return float(wall), int(kib) / 2**20


def run_width(work: Path, width: int, patients: int, src: Path, tag: str, rna_units: str = "tpm") -> dict:
    """Build and train on one width with the source tree ``src``; the row of the table."""
    modality, wide, cnv = make_inputs(work, width, patients)
    tag = tag if rna_units == "tpm" else f"{tag}_{rna_units}"
    cohort, run = work / f"cohort_{tag}_{width}", work / f"run_{tag}_{width}"
    shutil.rmtree(run, ignore_errors=True)
    py = [sys.executable, "-m", "pathalign"]
    build = [*py, "cohort", "build", f"--{modality}", str(wide), "--cnv", str(cnv), "--cnv-kind", "log2",
             "--out", str(cohort)]
    if modality == "rna":
        build += ["--rna-units", rna_units]
        if rna_units == "counts":  # TPM needs gene lengths: read whole, not streamed (see docs/cohort.md)
            lengths = work / f"lengths_{width}.tsv"
            names = pd.read_parquet(wide, columns=["feature"]).feature
            pd.DataFrame({"gene": names, "length": np.random.default_rng(1).integers(500, 10_000, len(names))}
                         ).to_csv(lengths, sep="\t", index=False)
            build += ["--gene-lengths", str(lengths)]
    b_wall, b_rss = timed(build, src, work / f"build_{tag}_{width}.log")
    train = [*py, "train", "--cohort", str(cohort), "--out", str(run), "--modalities", f"{modality},cnv",
             "--steps", "1", "--batch-size", "16", "--checkpoint-every", "1", "--diagnostics-every", "0",
             "--device", "cpu", "--quiet"]
    t_wall, t_rss = timed(train, src, work / f"train_{tag}_{width}.log")
    with open(run / "log.csv") as fh:
        step = float(next(csv.DictReader(fh))["step_seconds"])
    size = sum(p.stat().st_size for p in cohort.iterdir()) / 2**30
    return {"code": tag, "modality": modality if modality != "rna" else f"rna ({rna_units})", "features": width, "patients": patients, "cohort GiB": size,
            "build s": b_wall, "build peak GiB": b_rss, "train s": t_wall, "step 1 s": step,
            "train peak GiB": t_rss}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--widths", default="20000,60000,485577", help="comma-separated feature counts")
    p.add_argument("--patients", default="1000,1000,300", help="patients per width (one, or one per width)")
    p.add_argument("--work", default="/tmp/pathalign_wide_tables", help="folder for the synthetic data (kept)")
    p.add_argument("--baseline-src", default=None, help="another pathalign src/ tree to run too")
    p.add_argument("--baseline-widths", default="20000", help="widths to run with --baseline-src")
    p.add_argument("--rna-units", default="tpm", choices=("tpm", "counts"),
                   help="units of the RNA tables (counts: with gene lengths, the whole-matrix path)")
    args = p.parse_args(argv)
    widths = [int(w) for w in args.widths.split(",")]
    patients = [int(n) for n in args.patients.split(",")]
    patients = patients * len(widths) if len(patients) == 1 else patients
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for w, n in zip(widths, patients, strict=True):
        rows.append(run_width(work, w, n, SRC, "this", args.rna_units))
        print(rows[-1], flush=True)
        if args.baseline_src and str(w) in args.baseline_widths.split(","):
            rows.append(run_width(work, w, n, Path(args.baseline_src), "baseline", args.rna_units))
            print(rows[-1], flush=True)
    print(f"\n{platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python "
          f"{platform.python_version()}")
    cols = list(rows[0])
    print("| " + " | ".join(cols) + " |\n" + "|---" * len(cols) + "|")
    for r in rows:
        print("| " + " | ".join(f"{v:.2f}" if isinstance(v, float) else str(v) for v in r.values()) + " |")


if __name__ == "__main__":
    main()
