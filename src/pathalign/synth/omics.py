"""Synthetic molecular tables in the real formats (Xena-style matrices, GDC MAF).

Which part of the hidden state each table carries, and its noise, is documented in
:data:`pathalign.synth.state.MECHANISMS`; every noise level is multiplied by ``cfg.difficulty``.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from .state import PAIRED_GENE_FRACTION, PAIRED_TRAIT, SynthConfig, instability_vector, latent_matrix

INSTABILITY_GENES = 10  # MUT000..MUT009: mutated far more often in genomically unstable tumours
INSTABILITY_PROBE_FRACTION = 0.1  # the first 10 % of probes: hypermethylated when unstable

NON_SILENT = ("Missense_Mutation", "Nonsense_Mutation", "Frame_Shift_Del", "Frame_Shift_Ins", "Splice_Site",
              "In_Frame_Del")
SILENT = ("Silent", "Intron", "3'UTR", "5'Flank")


def _loadings(rng: np.random.Generator, n_latent: int, n_features: int, density: float, scale: float) -> np.ndarray:
    """Sparse ``[n_latent, n_features]`` effects of the hidden state on each feature."""
    w = rng.normal(0, scale, (n_latent, n_features))
    return w * (rng.random((n_latent, n_features)) < density)


def _aliquot(case: str, sample: str, analyte: str, rng: np.random.Generator, centre: str) -> str:
    return f"{case}-{sample}-{rng.integers(11, 13)}{analyte}-A{rng.integers(100, 999)}-{centre}"


def rna_table(cfg: SynthConfig, truth: pd.DataFrame) -> pd.DataFrame:
    """Genes x samples TPM (Xena orientation), tumour samples of RNA patients, some normals and second vials."""
    rng = np.random.default_rng([cfg.seed, 2])
    lat = latent_matrix(truth)
    genes = [f"GENE{i:05d}" for i in range(cfg.genes)]
    base = rng.normal(3.0, 1.5, cfg.genes)
    w = _loadings(rng, lat.shape[1], cfg.genes, 0.25, 1.0)
    w[-1] *= 1.5  # the spatial pattern moves a subset of genes (so alignment can teach it to the slide encoder)
    # the metabolic program (shared with methylation only) moves many genes strongly; instability: no term at all
    w_met = _loadings(rng, 1, cfg.genes, 0.3, 1.5)[0]
    met = truth["program_metabolic"].to_numpy()
    noise = 0.9 * cfg.difficulty
    pair_term = np.zeros((len(truth), cfg.genes))
    if cfg.paired_trait:  # the two-slide trait moves a few genes (its own stream: other draws unchanged)
        prng = np.random.default_rng([cfg.seed, 14])
        w_pair = np.zeros(cfg.genes)
        moved = prng.choice(cfg.genes, max(1, int(PAIRED_GENE_FRACTION * cfg.genes)), replace=False)
        w_pair[moved] = 2.0 * prng.choice([-1.0, 1.0], len(moved))
        sign = np.where(truth["paired_trait"].to_numpy() == PAIRED_TRAIT[1], 1.0, -1.0)
        pair_term = sign[:, None] * w_pair[None, :]
    cols, values = [], []
    idx = np.flatnonzero(truth["has_rna"].to_numpy())
    for i in idx:
        case = truth.case_id.iat[i]
        expr = base + lat[i] @ w + met[i] * w_met + pair_term[i] + rng.normal(0, noise, cfg.genes)
        cols.append(_aliquot(case, "01A", "R", rng, "07"))
        values.append(expr)
        if rng.random() < cfg.duplicate_vial_rate:  # a second vial: the TCGA rule keeps vial A
            cols.append(_aliquot(case, "01B", "R", rng, "07"))
            values.append(expr + rng.normal(0, 0.3, cfg.genes))
        if rng.random() < cfg.normal_sample_rate:  # solid tissue normal: must be dropped
            cols.append(_aliquot(case, "11A", "R", rng, "07"))
            values.append(base + rng.normal(0, 0.6, cfg.genes))
    for k in range(cfg.orphan_samples):  # samples of patients absent from the clinical table
        cols.append(f"TCGA-ZZ-{k:04d}-01A-11R-A000-07")
        values.append(base + rng.normal(0, 0.6, cfg.genes))
    log_tpm = np.stack(values, axis=1)
    tpm = np.clip(2.0 ** log_tpm - 1.0, 0, None)
    tpm = tpm / tpm.sum(0, keepdims=True) * 1e6
    df = pd.DataFrame(tpm.round(3), index=pd.Index(genes, name="gene"), columns=cols)
    return df


def maf_table(cfg: SynthConfig, truth: pd.DataFrame) -> pd.DataFrame:
    """GDC-style MAF rows: non-silent calls driven by the hidden state, plus silent noise."""
    rng = np.random.default_rng([cfg.seed, 3])
    lat = latent_matrix(truth)
    genes = [f"MUT{i:03d}" for i in range(cfg.mutation_genes)]
    w = _loadings(rng, lat.shape[1], cfg.mutation_genes, 0.25, 1.8)
    w[:, :INSTABILITY_GENES] = 0  # the instability genes follow instability alone
    logit = -2.8 + lat @ w + rng.normal(0, 0.8 * cfg.difficulty, (len(truth), cfg.mutation_genes))
    logit[:, :INSTABILITY_GENES] = -2.8 + 1.4 * instability_vector(truth)[:, None] \
        + rng.normal(0, 0.8 * cfg.difficulty, (len(truth), INSTABILITY_GENES))
    prob = 1 / (1 + np.exp(-logit))
    rows = []
    for i in np.flatnonzero(truth["has_snp"].to_numpy()):
        barcode = _aliquot(truth.case_id.iat[i], "01A", "D", rng, "08")
        hits = np.flatnonzero(rng.random(cfg.mutation_genes) < prob[i])
        for g in hits:
            for _ in range(1 + (rng.random() < 0.2)):
                rows.append((genes[g], barcode, NON_SILENT[rng.integers(len(NON_SILENT))]))
        for g in rng.choice(cfg.mutation_genes, rng.integers(0, 4), replace=False):
            rows.append((genes[g], barcode, SILENT[rng.integers(len(SILENT))]))
    df = pd.DataFrame(rows, columns=["Hugo_Symbol", "Tumor_Sample_Barcode", "Variant_Classification"])
    df.insert(1, "Chromosome", "chr" + pd.Series(rng.integers(1, 23, len(df))).astype(str))
    df.insert(2, "Start_Position", rng.integers(1_000_000, 200_000_000, len(df)))
    return df


def cnv_table(cfg: SynthConfig, truth: pd.DataFrame) -> pd.DataFrame:
    """Genes x samples GISTIC-thresholded copy number (-2..2), arm-level events driven by the state."""
    rng = np.random.default_rng([cfg.seed, 4])
    lat = latent_matrix(truth)
    n_arms = 12
    arm_of_gene = np.sort(rng.integers(0, n_arms, cfg.cnv_genes))
    w = _loadings(rng, lat.shape[1], n_arms, 0.4, 0.6)
    unstable_arms = np.zeros(n_arms)
    unstable_arms[rng.permutation(n_arms)[:6]] = [1.2, 1.2, 1.2, -1.2, -1.2, -1.2]  # 3 arms gained, 3 lost
    idx = np.flatnonzero(truth["has_cnv"].to_numpy())
    d = cfg.difficulty
    arm_level = (lat[idx] @ w + instability_vector(truth)[idx, None] * unstable_arms / 2 + unstable_arms / 2
                 + rng.normal(0, 0.6 * d, (len(idx), n_arms)))  # [n, arms]; the events only when unstable
    gene_level = arm_level[:, arm_of_gene] + rng.normal(0, 0.35 * d, (len(idx), cfg.cnv_genes))
    calls = np.clip(np.round(gene_level), -2, 2).astype(int)
    cols = [_aliquot(truth.case_id.iat[i], "01A", "D", rng, "01") for i in idx]
    genes = [f"CN{i:04d}" for i in range(cfg.cnv_genes)]
    df = pd.DataFrame(calls.T, index=pd.Index(genes, name="Gene Symbol"), columns=cols)
    return df


def methylation_table(cfg: SynthConfig, truth: pd.DataFrame) -> pd.DataFrame:
    """Probes x samples beta values (0..1) with NA."""
    rng = np.random.default_rng([cfg.seed, 5])
    lat = latent_matrix(truth)
    w = _loadings(rng, lat.shape[1], cfg.probes, 0.2, 1.5)
    base = rng.normal(0, 2.0, cfg.probes)
    w_met = _loadings(rng, 1, cfg.probes, 0.3, 1.2)[0]
    block = np.zeros(cfg.probes)
    block[:max(1, int(INSTABILITY_PROBE_FRACTION * cfg.probes))] = 1.2  # CIMP-like block
    idx = np.flatnonzero(truth["has_methylation"].to_numpy())
    met = truth["program_metabolic"].to_numpy()[idx]
    instab = instability_vector(truth)[idx]
    m = (base + lat[idx] @ w + met[:, None] * w_met + (instab[:, None] + 1) / 2 * block
         + rng.normal(0, 0.7 * cfg.difficulty, (len(idx), cfg.probes)))
    beta = 1 / (1 + np.exp(-m))
    beta[rng.random(beta.shape) < cfg.methylation_na_rate] = np.nan
    cols = [_aliquot(truth.case_id.iat[i], "01A", "D", rng, "05") for i in idx]
    probes = [f"cg{rng.integers(10**7, 10**8)}" for _ in range(cfg.probes)]
    df = pd.DataFrame(beta.T.round(4), index=pd.Index(probes, name="probe"), columns=cols)
    return df[~df.index.duplicated()]
