"""The hidden patient state that drives every synthetic modality (DESIGN §7).

Every patient has a shared state (cancer type, subtype, four continuous programs, the spatial
pattern ``tumour_side``) seen by every modality, plus two factors that only some modalities see,
so that each claim of the method has a mechanism to test (see :data:`MECHANISMS`):

* ``genomic_instability`` (high/low, independent of everything else): mutations, copy number,
  methylation and the slide's tumour arrangement carry it; RNA does not (claim b);
* ``program_metabolic`` (continuous, independent): RNA and methylation carry it; slides, mutations
  and copy number do not (with ``genomic_instability``, each pair of modalities shares a different
  part of the state, which a per-pair adapter can select and one shared projection cannot; claim d).

``difficulty`` multiplies every noise level (and weakens the slide cues), so signal to noise falls
monotonically as it grows; 1.0 is the default cohort.

Optionally (``paired_trait``), a trait that needs two of a patient's slides: every patient with slides
has two, each showing one binary cue of its own, and the patient's trait is whether the two cues differ
(an XOR); see :data:`PAIRED_MECHANISM`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ..errors import PathalignError

CANCER_TYPES = ("BRCA", "LUAD", "COAD")
SUBTYPES = {"BRCA": ("LumA", "Basal"), "LUAD": ("TRU", "PI"), "COAD": ("CIN", "MSI")}
TISSUE_SOURCE_SITES = {"BRCA": ("A1", "BH", "E2"), "LUAD": ("05", "44", "MP"), "COAD": ("AA", "CM", "D5")}
PROGRAMS = ("immune", "proliferation", "stroma", "hypoxia")
PATTERNS = ("left", "right")  # on which side of every tissue fragment the tumour sits (slide axes)
INSTABILITY = ("low", "high")  # genomic instability: seen by SNP, CNV, methylation and the slide, not by RNA
# probability that a patient has each modality, drawn independently (then every patient is given at least two):
# methylation for ~30 % of patients, so complete cases (all five) are rare (~7 %), as in real multi-omics cohorts
MODALITY_RATES = {"wsi": 0.9, "rna": 0.8, "snp": 0.6, "cnv": 0.55, "methylation": 0.3}

MECHANISMS = """\
# How this synthetic cohort is made (the truth behind every benchmark task)

Hidden state per patient (`truth.parquet`, one row per patient):

| factor | values | seen by |
|---|---|---|
| cancer type, subtype | 3 types x 2 subtypes | every modality (slide: tumour texture) |
| programs immune, proliferation, stroma, hypoxia | continuous, type/subtype-shifted | every modality (slide: tissue composition) |
| `tumour_side` (claim a) | left/right | slide (tumour on that side of each fragment), a few RNA genes |
| `genomic_instability` (claim b) | low/high, independent | SNP, CNV, methylation and the slide — **not RNA** |
| `program_metabolic` (claim d) | continuous, independent | RNA and methylation only |

Mechanisms, one per claim of the method:

* **(a) spatial arrangement inside fragments** — the tumour fills the left or the right part of every
  fragment with the same area; composition and interface length do not depend on the side, only the
  arrangement does. A fraction `0.15 x difficulty` (at most 0.45) of the fragments has the tumour on the
  other side, so a slide's label must be read from several fragments. Task: `tumour_side`.
* **(b) a trait carried by mutation, CNV and methylation but not RNA** — `genomic_instability` raises the
  mutation rate of 10 genes (`MUT000`–`MUT009`), gains 3 and loses 3 chromosome arms, hypermethylates a
  block of probes (the first 10 %), and on the slide puts the large-nucleus tumour subclone in the upper
  half of each fragment's tumour (low: in the lower half). The slide has the same patches in the same
  amounts in both states, only their arrangement differs, so the mean of patch features cannot read it;
  the RNA table has no term in it. Task: `genomic_instability` (slide-level probe).
  A model aligned on every pair can learn it from SNP/CNV/methylation; one aligned on WSI-RNA alone has no
  signal to learn it from.
* **(c) heavy, realistic missingness** — modalities are present with probabilities
  wsi 0.9, rna 0.8, snp 0.6, cnv 0.55, methylation 0.3 (then each patient is given at least two), so only
  ~7 % of patients have all five. Training on every patient (ValidPair masking) sees ~13x more patients
  than training on complete cases only.
* **(d) modality-specific content, scales and noise** — each pair of modalities shares a different part
  of the state (WSI-SNP share instability, RNA-methylation share the metabolic program, WSI-RNA share
  neither), with large variance in the parts a given partner cannot see; modalities come in their native
  scales (TPM over six orders of magnitude, binary mutation calls, integer CNV -2..2, methylation beta
  0..1) with their own noise levels (below). Per-pair adapters can select, for each pair, the part that
  pair shares; one shared projection per modality must carry all of it into every pair.

* **(e) optional (`pathalign synth --paired-trait`): a trait that needs two slides read together** — see
  the section below when this cohort has it.

Noise (standard deviation, each times `difficulty`): RNA log2-expression 0.9 per gene; CNV 0.6 per arm
and 0.35 per gene; methylation 0.7 (logit scale) per probe; mutation calls are Bernoulli draws (their
logits get 0.8 of noise); slides: tissue-fraction noise 0.08, discordant fragments 0.15, nucleus-size
contrast of the two subclones 1 + 0.35 / difficulty.
"""


PAIRED_TRAIT = ("concordant", "discordant")  # the two cues of a patient's slides agree / differ
PAIRED_GENE_FRACTION = 0.2  # RNA genes moved by the paired trait
PAIRED_MECHANISM = """
## (e) A trait that needs two slides (`--paired-trait`)

Every patient with slides has exactly two (`DX1`, `DX2`). Each slide carries one binary cue of its own,
drawn independently per slide (`paired_cue_1`, `paired_cue_2` in `truth.parquet`): with the cue,
pale mucin lakes replace about 30 % of the slide's stroma (painted before the stain variation, so
they read as bright, low-eosin patches); without it, none. The patient's `paired_trait` (clinical
column) is `discordant` when the two cues differ and `concordant` when they agree: an XOR. RNA carries
it strongly (20 % of the genes move by ±2 log2 units with it; no other modality does), so that alignment
has a reason to teach it to the slide encoder.

No single slide tells it (each cue is independent of the trait), and no linear read-out of the mean
of a patient's slide embeddings does either: the mean of two slides is the same function of
(cue 1 + cue 2) whichever slide holds which cue, and the trait is 1 exactly at the middle value of
that sum (both class means of any linear score lie on one line, the discordant one between the two
concordant ones). A model that reads both slides in one sequence can compute it.
"""


class SynthConfigError(PathalignError, ValueError):
    """An unusable synth setting; the message names it."""


@dataclass
class SynthConfig:
    """Sizes and rates of a synthetic cohort; everything is derived from ``seed``.

    ``difficulty`` (> 0) multiplies every noise level and weakens the slide cues (1.0: the default cohort;
    0.5: easier; 2.0: harder). ``modality_rates``: probability of each modality per patient.
    """

    patients: int = 200
    seed: int = 0
    genes: int = 1000
    mutation_genes: int = 60
    cnv_genes: int = 240
    probes: int = 600
    slide_size: int = 2048
    mpp: float = 0.5
    difficulty: float = 1.0
    modality_rates: dict = field(default_factory=lambda: dict(MODALITY_RATES))
    second_slide_rate: float = 0.15
    normal_sample_rate: float = 0.04
    duplicate_vial_rate: float = 0.03
    methylation_na_rate: float = 0.03
    orphan_samples: int = 2
    paired_trait: bool = False

    def __post_init__(self):
        if self.patients < 4:
            raise SynthConfigError(f"synth needs at least 4 patients, got {self.patients}")
        if self.slide_size < 512:
            raise SynthConfigError(f"slide_size must be >= 512 px, got {self.slide_size}")
        if not 0 < self.mpp < 10:
            raise SynthConfigError(f"mpp must be in (0, 10), got {self.mpp}")
        if not 0 < self.difficulty <= 10:
            raise SynthConfigError(f"difficulty must be in (0, 10], got {self.difficulty}")
        if self.mutation_genes < 10:
            raise SynthConfigError(f"mutation_genes must be >= 10 (the instability genes), got {self.mutation_genes}")
        if set(self.modality_rates) != set(MODALITY_RATES) or not all(0 < r <= 1 for r in self.modality_rates.values()):
            raise SynthConfigError(f"modality_rates needs a rate in (0, 1] for each of {list(MODALITY_RATES)}, "
                             f"got {self.modality_rates}")

    @property
    def slide_params(self) -> dict:
        """The slide cues at this difficulty (see :data:`MECHANISMS`)."""
        d = self.difficulty
        return {"discordant_fragments": min(0.45, 0.15 * d), "fraction_noise": 0.08 * d,
                "nucleus_contrast": 0.35 / d}


def _barcode_case(rng: np.random.Generator, cancer: str, used: set[str]) -> str:
    alphabet = np.array(list("0123456789ABCDEFGHJKLMNPQRSTUVWXYZ"))
    while True:
        tss = TISSUE_SOURCE_SITES[cancer][rng.integers(3)]
        case = f"TCGA-{tss}-{''.join(rng.choice(alphabet, 4))}"
        if case not in used:
            used.add(case)
            return case


def sample_truth(cfg: SynthConfig) -> pd.DataFrame:
    """One row per patient: ids, cancer type, subtype, programs, spatial pattern, instability, the metabolic
    program, survival, modalities."""
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
    has = {m: rng.random(n) < cfg.modality_rates[m] for m in MODALITY_RATES}  # a fixed draw order
    mods = list(MODALITY_RATES)
    for i in range(n):  # every patient has at least two modalities
        while sum(has[m][i] for m in mods) < 2:
            has[mods[rng.integers(len(mods))]][i] = True
    n_slides = np.where(has["wsi"], 1 + (rng.random(n) < cfg.second_slide_rate), 0)
    # drawn last, from their own stream, so that adding them left every earlier draw of a seed unchanged
    extra = np.random.default_rng([cfg.seed, 12])
    instability = extra.integers(0, 2, n)
    metabolic = extra.normal(0, 1, n)
    paired = None
    if cfg.paired_trait:  # its own stream, so every other draw of a seed is unchanged
        n_slides = np.where(has["wsi"], 2, 0)
        paired = np.random.default_rng([cfg.seed, 13]).integers(0, 2, (n, 2))
    df = pd.DataFrame({
        "case_id": cases,
        "cancer_type": [CANCER_TYPES[c] for c in cancer],
        "subtype": [f"{CANCER_TYPES[c]}_{SUBTYPES[CANCER_TYPES[c]][s]}" for c, s in zip(cancer, sub)],
        "tumour_side": [PATTERNS[p] for p in pattern],
        "genomic_instability": [INSTABILITY[s] for s in instability],
        "age": rng.integers(35, 85, n),
        "OS_days": os_days,
        "OS_event": os_event,
    })
    for j, name in enumerate(PROGRAMS):
        df[f"program_{name}"] = z[:, j]
    df["program_metabolic"] = metabolic
    for m in mods:
        df[f"has_{m}"] = has[m]
    df["n_slides"] = n_slides
    if paired is not None:
        df["paired_cue_1"], df["paired_cue_2"] = paired[:, 0], paired[:, 1]
        df["paired_trait"] = [PAIRED_TRAIT[int(a != b)] for a, b in paired]
    return df


def latent_matrix(truth: pd.DataFrame) -> np.ndarray:
    """``[P, 14]`` design of the shared state: one-hot type (3), one-hot subtype (6), programs (4), pattern (1)."""
    ct = truth["cancer_type"].map({c: i for i, c in enumerate(CANCER_TYPES)}).to_numpy()
    sub = truth.apply(lambda r: SUBTYPES[r.cancer_type].index(r.subtype.split("_", 1)[1]), axis=1).to_numpy()
    n = len(truth)
    onehot_t = np.eye(len(CANCER_TYPES))[ct]
    onehot_s = np.eye(2 * len(CANCER_TYPES))[ct * 2 + sub]
    z = truth[[f"program_{p}" for p in PROGRAMS]].to_numpy()
    pat = (truth["tumour_side"] == PATTERNS[1]).to_numpy(float)[:, None] * 2 - 1
    return np.concatenate([onehot_t, onehot_s, z, pat], axis=1).reshape(n, -1)


def instability_vector(truth: pd.DataFrame) -> np.ndarray:
    """``[P]`` genomic instability as -1 (low) / +1 (high)."""
    return (truth["genomic_instability"] == INSTABILITY[1]).to_numpy(float) * 2 - 1
