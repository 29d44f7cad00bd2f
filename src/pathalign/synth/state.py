"""The hidden patient state that drives every synthetic modality (DESIGN §7)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

CANCER_TYPES = ("BRCA", "LUAD", "COAD")
SUBTYPES = {"BRCA": ("LumA", "Basal"), "LUAD": ("TRU", "PI"), "COAD": ("CIN", "MSI")}
TISSUE_SOURCE_SITES = {"BRCA": ("A1", "BH", "E2"), "LUAD": ("05", "44", "MP"), "COAD": ("AA", "CM", "D5")}
PROGRAMS = ("immune", "proliferation", "stroma", "hypoxia")
PATTERNS = ("left", "right")  # on which side of every tissue fragment the tumour sits (slide axes)
MODALITY_RATES = {"wsi": 0.9, "rna": 0.85, "snp": 0.8, "cnv": 0.75, "methylation": 0.6}


@dataclass
class SynthConfig:
    """Sizes and rates of a synthetic cohort; everything is derived from ``seed``."""

    patients: int = 200
    seed: int = 0
    genes: int = 1000
    mutation_genes: int = 60
    cnv_genes: int = 240
    probes: int = 600
    slide_size: int = 2048
    mpp: float = 0.5
    second_slide_rate: float = 0.15
    normal_sample_rate: float = 0.04
    duplicate_vial_rate: float = 0.03
    methylation_na_rate: float = 0.03
    orphan_samples: int = 2

    def __post_init__(self):
        if self.patients < 4:
            raise ValueError(f"synth needs at least 4 patients, got {self.patients}")
        if self.slide_size < 512:
            raise ValueError(f"slide_size must be >= 512 px, got {self.slide_size}")
        if not 0 < self.mpp < 10:
            raise ValueError(f"mpp must be in (0, 10), got {self.mpp}")


def _barcode_case(rng: np.random.Generator, cancer: str, used: set[str]) -> str:
    alphabet = np.array(list("0123456789ABCDEFGHJKLMNPQRSTUVWXYZ"))
    while True:
        tss = TISSUE_SOURCE_SITES[cancer][rng.integers(3)]
        case = f"TCGA-{tss}-{''.join(rng.choice(alphabet, 4))}"
        if case not in used:
            used.add(case)
            return case


def sample_truth(cfg: SynthConfig) -> pd.DataFrame:
    """One row per patient: ids, cancer type, subtype, programs, spatial pattern, survival, modalities."""
    rng = np.random.default_rng([cfg.seed, 1])
    n = cfg.patients
    cancer = rng.choice(len(CANCER_TYPES), n, p=[0.4, 0.3, 0.3])
    sub = rng.integers(0, 2, n)
    pattern = rng.integers(0, 2, n)
    # programs: type and subtype shift the means
    type_shift = rng.normal(0, 0.9, (len(CANCER_TYPES), 2, len(PROGRAMS)))
    z = rng.normal(0, 1, (n, len(PROGRAMS))) + type_shift[cancer, sub]
    used: set[str] = set()
    cases = [_barcode_case(rng, CANCER_TYPES[c], used) for c in cancer]
    # survival: proliferation and hypoxia shorten it, and so does the second subtype
    log_hazard = 0.6 * z[:, 1] + 0.4 * z[:, 3] + 0.5 * sub + np.array([0.0, 0.4, -0.2])[cancer]
    t_event = rng.exponential(1500 * np.exp(-log_hazard))
    t_censor = rng.uniform(300, 4000, n)
    os_days = np.maximum(1, np.minimum(t_event, t_censor)).round().astype(int)
    os_event = (t_event <= t_censor).astype(int)
    has = {m: rng.random(n) < r for m, r in MODALITY_RATES.items()}
    mods = list(MODALITY_RATES)
    for i in range(n):  # every patient has at least two modalities
        while sum(has[m][i] for m in mods) < 2:
            has[mods[rng.integers(len(mods))]][i] = True
    n_slides = np.where(has["wsi"], 1 + (rng.random(n) < cfg.second_slide_rate), 0)
    df = pd.DataFrame({
        "case_id": cases,
        "cancer_type": [CANCER_TYPES[c] for c in cancer],
        "subtype": [f"{CANCER_TYPES[c]}_{SUBTYPES[CANCER_TYPES[c]][s]}" for c, s in zip(cancer, sub)],
        "tumour_side": [PATTERNS[p] for p in pattern],
        "age": rng.integers(35, 85, n),
        "OS_days": os_days,
        "OS_event": os_event,
    })
    for j, name in enumerate(PROGRAMS):
        df[f"program_{name}"] = z[:, j]
    for m in mods:
        df[f"has_{m}"] = has[m]
    df["n_slides"] = n_slides
    return df


def latent_matrix(truth: pd.DataFrame) -> np.ndarray:
    """``[P, 14]`` design of the hidden state: one-hot type (3), one-hot subtype (6), programs (4), pattern (1)."""
    ct = truth["cancer_type"].map({c: i for i, c in enumerate(CANCER_TYPES)}).to_numpy()
    sub = truth.apply(lambda r: SUBTYPES[r.cancer_type].index(r.subtype.split("_", 1)[1]), axis=1).to_numpy()
    n = len(truth)
    onehot_t = np.eye(len(CANCER_TYPES))[ct]
    onehot_s = np.eye(2 * len(CANCER_TYPES))[ct * 2 + sub]
    z = truth[[f"program_{p}" for p in PROGRAMS]].to_numpy()
    pat = (truth["tumour_side"] == PATTERNS[1]).to_numpy(float)[:, None] * 2 - 1
    return np.concatenate([onehot_t, onehot_s, z, pat], axis=1).reshape(n, -1)
