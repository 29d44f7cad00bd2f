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

import argparse

from .options import include, out_option, seed_option


def add_arguments(p: argparse.ArgumentParser) -> None:
    include(p, out_option("output folder"))
    p.add_argument("--patients", type=int, default=200, help="number of patients (default 200)")
    include(p, seed_option("random seed (the cohort is deterministic for a seed)"))
    p.add_argument("--slide-size", type=int, default=2048, help="slide side in level-0 px (default 2048)")
    p.add_argument("--mpp", type=float, default=0.5, help="µm per level-0 px (default 0.5 = 20x)")
    p.add_argument("--genes", type=int, default=1000, help="RNA genes")
    p.add_argument("--difficulty", type=float, default=1.0,
                   help="multiplies every noise level and weakens the slide cues (default 1.0; 0.5 easier, 2 harder); "
                        "see truth.md in the output for what it scales")
    p.add_argument("--workers", type=int, default=None, help="processes rendering slides (default: all cores)")


def run(args: argparse.Namespace) -> int:
    from ..synth import SynthConfig, generate_cohort

    cfg = SynthConfig(patients=args.patients, seed=args.seed, slide_size=args.slide_size, mpp=args.mpp, genes=args.genes,
                      difficulty=args.difficulty)
    generate_cohort(args.out, cfg, workers=args.workers)
    return 0
