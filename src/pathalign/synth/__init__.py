"""``pathalign synth``: a synthetic multimodal cohort in the real file formats (DESIGN §7).

Writes, under ``--out``:

* ``slides/<slide_id>.tiff`` — pyramidal tiled JPEG TIFFs with mpp, 1-6 tissue fragments each;
* ``slides.tsv`` (``slide_id``, ``case_id``, ``path``) and ``clinical.tsv`` (``case_id``,
  ``cancer_type``, ``subtype``, ``tumour_side``, ``genomic_instability``, ``age``, ``OS_days``, ``OS_event``);
* ``rna_tpm.tsv.gz`` (genes x samples TPM, with normal samples and second vials),
  ``mutations.maf`` (GDC MAF with a comment header and silent calls), ``cnv_gistic.tsv``
  (genes x samples, -2..2), ``methylation_beta.tsv.gz`` (probes x samples, NA allowed);
* ``truth.parquet`` — the hidden state and which modalities each patient has;
* ``truth.md`` — how each modality is made from the hidden state (the mechanism behind each claim of
  the method, :data:`~pathalign.synth.state.MECHANISMS`), with this cohort's settings and measured rates;
  ``synth_config.json`` — the settings.

Deterministic for a seed. ``difficulty`` scales every noise level (signal to noise falls as it grows).
"""
from __future__ import annotations

import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd

from ..io.atomic import atomic_path, atomic_write_df, atomic_write_json, atomic_write_text
from .omics import cnv_table, maf_table, methylation_table, rna_table
from .slides import render_slide, texture_bank, write_pyramidal_tiff
from .state import (
    CANCER_TYPES,
    MECHANISMS,
    MODALITY_RATES,
    PAIRED_MECHANISM,
    PROGRAMS,
    SUBTYPES,
    SynthConfig,
    sample_truth,
)

__all__ = ["MECHANISMS", "SynthConfig", "generate_cohort"]

_BANK = {}


def _slide_job(job: dict) -> None:
    seed, params = job["seed"], job["params"]
    key = (seed, params["nucleus_contrast"])
    if key not in _BANK:
        _BANK.clear()
        _BANK[key] = texture_bank(seed, params["nucleus_contrast"])
    rng = np.random.default_rng([seed, 7, job["index"]])
    img, _ = render_slide(rng, _BANK[key], job["cancer_type"], job["sub"], job["pattern"], np.asarray(job["programs"]),
                          job["size"], int(rng.integers(1, 7)), job["instability"], params)
    write_pyramidal_tiff(Path(job["path"]), img, job["mpp"])


def generate_cohort(out: str | Path, cfg: SynthConfig, workers: int | None = None, progress: bool = True) -> pd.DataFrame:
    """Write a synthetic cohort to ``out``; returns the truth table.

    Args:
        out: output folder (created).
        cfg: sizes, rates and seed.
        workers: processes rendering slides (default: CPU count).
        progress: print one line per stage.
    """
    out = Path(out)
    (out / "slides").mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    truth = sample_truth(cfg)
    slide_rows, jobs = [], []
    for i, r in truth.iterrows():
        for k in range(int(r.n_slides)):
            slide_id = f"{r.case_id}-01Z-00-DX{k + 1}"
            path = out / "slides" / f"{slide_id}.tiff"
            slide_rows.append((slide_id, r.case_id, f"slides/{slide_id}.tiff"))
            jobs.append(dict(seed=cfg.seed, index=len(jobs), path=str(path), cancer_type=r.cancer_type,
                             sub=SUBTYPES[r.cancer_type].index(r.subtype.split("_", 1)[1]), pattern=r.tumour_side,
                             instability=r.genomic_instability,
                             params=dict(cfg.slide_params, mucin=bool(r[f"paired_cue_{k + 1}"])) if cfg.paired_trait
                             else cfg.slide_params,
                             programs=[float(r[f"program_{p}"]) for p in PROGRAMS], size=cfg.slide_size, mpp=cfg.mpp))
    workers = workers or min(len(jobs), os.cpu_count() or 1)
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            list(pool.map(_slide_job, jobs, chunksize=max(1, len(jobs) // (4 * workers))))
    else:
        for job in jobs:
            _slide_job(job)
    if progress:
        print(f"synth: {len(jobs)} slides written in {time.perf_counter() - t0:.1f} s", flush=True)
    atomic_write_df(pd.DataFrame(slide_rows, columns=["slide_id", "case_id", "path"]), out / "slides.tsv")
    clinical = truth[["case_id", "cancer_type", "subtype", "tumour_side", "genomic_instability", "age", "OS_days",
                      "OS_event"] + (["paired_trait"] if cfg.paired_trait else [])]
    atomic_write_df(clinical, out / "clinical.tsv")
    atomic_write_df(rna_table(cfg, truth), out / "rna_tpm.tsv.gz", index=True)
    maf = maf_table(cfg, truth)
    with atomic_path(out / "mutations.maf") as tmp, open(tmp, "w") as fh:
        fh.write("#version gdc-1.0.0\n#filedate 20261128\n#annotation.spec gdc-1.0.1-public\n")
        maf.to_csv(fh, sep="\t", index=False)
    atomic_write_df(cnv_table(cfg, truth), out / "cnv_gistic.tsv", index=True)
    atomic_write_df(methylation_table(cfg, truth), out / "methylation_beta.tsv.gz", index=True, na_rep="NA")
    atomic_write_df(truth, out / "truth.parquet")
    atomic_write_json(asdict(cfg), out / "synth_config.json")
    atomic_write_text(describe(cfg, truth), out / "truth.md")
    if progress:
        print(f"synth: {len(truth)} patients ({', '.join(CANCER_TYPES)}), tables written to {out} "
              f"in {time.perf_counter() - t0:.1f} s", flush=True)
    return truth


def describe(cfg: SynthConfig, truth: pd.DataFrame) -> str:
    """``truth.md``: the mechanisms, this cohort's settings and its measured modality rates."""
    has = truth[[f"has_{m}" for m in MODALITY_RATES]]
    rates = "\n".join(f"| {m} | {cfg.modality_rates[m]:.2f} | {has[f'has_{m}'].mean():.3f} |" for m in MODALITY_RATES)
    slide = ", ".join(f"{k} {v:.3f}" for k, v in cfg.slide_params.items())
    paired = ""
    if cfg.paired_trait:
        paired = PAIRED_MECHANISM + (f"\nThis cohort: `paired_trait` discordant for "
                                     f"{(truth.paired_trait == 'discordant')[truth.has_wsi].mean():.1%} of the patients "
                                     f"with slides.\n")
    return (MECHANISMS + paired + f"""
## This cohort

Seed {cfg.seed}, {cfg.patients} patients, difficulty {cfg.difficulty:g}; slide cues: {slide}.
Patients with all five modalities: {int(has.all(axis=1).sum())} ({has.all(axis=1).mean():.1%}).
`genomic_instability` high: {(truth.genomic_instability == 'high').mean():.1%}.

| modality | configured rate | share of patients (after the two-modality rule) |
|---|---|---|
{rates}
""")
