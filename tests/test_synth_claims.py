"""The synthetic cohort's mechanisms hold as documented in ``truth.md`` (pathalign.synth.state.MECHANISMS).

Each claim of the method has a mechanism in the generator; these tests read the tables the generator
writes (through ``cohort build``, the path users take) and check the mechanism with simple probes
computed here, independently of the generator's code.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from pathalign.synth import MECHANISMS, SynthConfig
from pathalign.synth.omics import cnv_table, maf_table, methylation_table, rna_table
from pathalign.synth.slides import CLASSES, tissue_classes
from pathalign.synth.state import MODALITY_RATES, SynthConfigError, sample_truth


def _probe_accuracy(x: np.ndarray, y: np.ndarray, seed: int = 0) -> float:
    """5-fold cross-validated accuracy of a standardised, L2-regularised logistic regression."""
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))
    return float(cross_val_score(clf, x, y, cv=StratifiedKFold(5, shuffle=True, random_state=seed)).mean())


def _tumour_matrix(table: pd.DataFrame, truth: pd.DataFrame, transform=lambda x: x):
    """Patients x features of the tumour vial-A samples of a samples-as-columns table, and their truth rows."""
    cols = [c for c in table.columns if c[13:16] == "01A" and not c.startswith("TCGA-ZZ")]
    t = truth.set_index("case_id").loc[[c[:12] for c in cols]].reset_index()
    x = transform(table[cols].to_numpy(float).T)
    return np.where(np.isnan(x), np.nanmean(x, axis=0), x), t


def _maf_matrix(maf: pd.DataFrame, truth: pd.DataFrame):
    """Patients x genes 0/1 of non-silent calls (the MAF rule of DESIGN §3), for the patients with SNP data."""
    hits = maf[~maf.Variant_Classification.isin(["Silent", "Intron", "3'UTR", "5'Flank"])]
    m = pd.crosstab(hits.Tumor_Sample_Barcode.str[:12], hits.Hugo_Symbol).clip(0, 1)
    ids = truth.case_id[truth.has_snp]
    return m.reindex(index=ids, columns=sorted(set(maf.Hugo_Symbol))).fillna(0).to_numpy(float), \
        truth.set_index("case_id").loc[ids].reset_index()


def _logit(x):
    x = np.clip(x, 1e-3, 1 - 1e-3)
    return np.log(x / (1 - x))


def _omics(seed: int = 3, patients: int = 400) -> dict:
    cfg, truth, rna, cnv, meth, maf = _tables(1.0, seed=seed, patients=patients)
    return {"rna": _tumour_matrix(rna, truth, lambda x: np.log2(x + 1)), "cnv": _tumour_matrix(cnv, truth),
            "methylation": _tumour_matrix(meth, truth, _logit), "snp": _maf_matrix(maf, truth)}


def test_instability_is_carried_by_snp_cnv_methylation_and_not_by_rna():
    """Claim (b)'s mechanism: a linear probe reads instability from SNP, CNV and methylation, not from RNA."""
    acc = {}
    for m, (x, t) in _omics().items():
        acc[m] = _probe_accuracy(x, t.genomic_instability.to_numpy())
        acc[f"{m} n"] = len(t)
    x, t = _omics()["rna"]
    acc["rna cancer_type"] = _probe_accuracy(x, t.cancer_type.to_numpy())  # positive control: same probe, same RNA
    for m in ("snp", "cnv", "methylation"):
        assert acc[m] > 0.8, acc
    assert acc["rna"] < 0.5 + 3 * 0.5 / np.sqrt(acc["rna n"]), acc  # within three standard errors of a coin
    assert acc["rna cancer_type"] > 0.9, acc


def test_metabolic_program_is_in_rna_and_methylation_only():
    """Claim (d)'s mechanism: each pair of modalities shares a different part of the state."""
    from sklearn.decomposition import PCA
    from sklearn.model_selection import cross_val_predict

    r2 = {}
    for m, (x, t) in _omics().items():
        y = t.program_metabolic.to_numpy()
        model = make_pipeline(StandardScaler(), PCA(20, random_state=0), LinearRegression())
        pred = cross_val_predict(model, x, y, cv=5)  # out-of-sample R²
        r2[m] = 1 - np.mean((pred - y) ** 2) / np.var(y)
    assert r2["rna"] > 0.5 and r2["methylation"] > 0.3, r2
    assert r2["snp"] < 0.1 and r2["cnv"] < 0.1, r2


def test_modalities_come_in_their_native_scales(small_cohort):
    from pathalign.cohort import load_cohort

    cohort = load_cohort(small_cohort)
    rna = cohort.matrix("rna").to_numpy(float)
    pos = rna[rna > 0]
    assert np.log10(pos.max() / np.percentile(pos, 1)) > 4  # TPM spans orders of magnitude
    assert set(np.unique(cohort.matrix("snp").to_numpy())) <= {0, 1}
    cnv = cohort.matrix("cnv").to_numpy()
    assert set(np.unique(cnv)) <= {-2, -1, 0, 1, 2} and len(np.unique(cnv)) == 5
    meth = cohort.matrix("methylation").to_numpy(float)
    assert np.nanmin(meth) >= 0 and np.nanmax(meth) <= 1 and np.isnan(meth).any()


def test_missingness_rates_are_as_configured_and_complete_cases_rare():
    n = 4000
    truth = sample_truth(SynthConfig(patients=n, seed=5))
    has = truth[[f"has_{m}" for m in MODALITY_RATES]]
    # the only departure from independent draws: a patient with < 2 modalities gets more, so rates can only rise
    p_short = sum(np.prod([(r if m == k else 1 - r) for m, r in MODALITY_RATES.items()]) for k in MODALITY_RATES) \
        + np.prod([1 - r for r in MODALITY_RATES.values()])
    for m, r in MODALITY_RATES.items():
        obs, se = has[f"has_{m}"].mean(), np.sqrt(r * (1 - r) / n)
        assert r - 4 * se < obs < r + p_short + 4 * se, (m, obs, r)
    assert abs(has["has_methylation"].mean() - 0.3) < 0.03
    complete = has.all(axis=1).mean()
    assert abs(complete - np.prod(list(MODALITY_RATES.values()))) < 0.02 and complete < 0.1, complete
    assert (has.sum(axis=1) >= 2).all()
    custom = sample_truth(SynthConfig(patients=n, seed=5, modality_rates={**MODALITY_RATES, "methylation": 0.9}))
    assert abs(custom.has_methylation.mean() - 0.9) < 0.03
    with pytest.raises(SynthConfigError, match="modality_rates"):
        SynthConfig(modality_rates={"wsi": 0.5})
    with pytest.raises(SynthConfigError, match="difficulty"):
        SynthConfig(difficulty=0)


def _tables(difficulty: float, seed: int = 2, patients: int = 300):
    cfg = SynthConfig(patients=patients, seed=seed, genes=150, probes=100, cnv_genes=80, difficulty=difficulty)
    truth = sample_truth(cfg)
    return cfg, truth, rna_table(cfg, truth), cnv_table(cfg, truth), methylation_table(cfg, truth), maf_table(cfg, truth)


def _design(truth: pd.DataFrame) -> np.ndarray:
    """Every hidden factor, one-hot / continuous, computed here from the truth columns."""
    cols = [pd.get_dummies(truth[c]).to_numpy(float) for c in ("cancer_type", "subtype", "tumour_side",
                                                               "genomic_instability")]
    cont = truth[[c for c in truth.columns if c.startswith("program_")]].to_numpy(float)
    return np.concatenate(cols + [cont], axis=1)


def _r2_on_truth(table: pd.DataFrame, truth: pd.DataFrame, transform=lambda x: x) -> float:
    """Mean in-sample R² of each feature on the hidden factors (tumour vial-A samples only)."""
    cols = [c for c in table.columns if c[13:16] == "01A" and not c.startswith("TCGA-ZZ")]
    t = truth.set_index("case_id").loc[[c[:12] for c in cols]].reset_index()
    y = transform(table[cols].to_numpy(float).T)
    y = np.where(np.isnan(y), np.nanmean(y, axis=0), y)
    x = _design(t)
    resid = y - LinearRegression().fit(x, y).predict(x)
    return float(1 - resid.var(axis=0).sum() / y.var(axis=0).sum())


def test_difficulty_lowers_signal_to_noise_monotonically():
    r2 = {}
    for d in (0.5, 1.0, 2.0):
        cfg, truth, rna, cnv, meth, _ = _tables(d)
        r2[d] = (_r2_on_truth(rna, truth, lambda x: np.log2(x + 1)), _r2_on_truth(cnv, truth),
                 _r2_on_truth(meth, truth, lambda x: np.log(np.clip(x, 1e-3, 1 - 1e-3) / (1 - np.clip(x, 1e-3, 1 - 1e-3)))))
        sp = cfg.slide_params
        r2[d] += (-sp["discordant_fragments"], -sp["fraction_noise"], sp["nucleus_contrast"])
    for k in range(6):
        assert r2[0.5][k] > r2[1.0][k] > r2[2.0][k], (k, r2)


def test_same_seed_same_tables_and_difficulty_changes_them():
    a, b, c = _tables(1.0, patients=40), _tables(1.0, patients=40), _tables(1.5, patients=40)
    pd.testing.assert_frame_equal(a[1], b[1])
    for x, y in zip(a[2:], b[2:]):
        pd.testing.assert_frame_equal(x, y)
    pd.testing.assert_frame_equal(a[1], c[1])  # the hidden state does not depend on the difficulty ...
    assert not a[3].equals(c[3])  # ... the noise does
    # the draws do not depend on the order of the rates (a config read back from synth_config.json is sorted)
    shuffled = SynthConfig(patients=40, seed=2, modality_rates=dict(sorted(MODALITY_RATES.items())))
    pd.testing.assert_frame_equal(sample_truth(shuffled), sample_truth(SynthConfig(patients=40, seed=2)))


def test_slide_instability_changes_the_arrangement_not_the_composition():
    """Per fragment, the large-nucleus subclone is above the small one when unstable and below when stable,
    with equal areas: the same patches in the same amounts, arranged differently."""
    for inst, above in (("high", True), ("low", False)):
        for i in range(6):
            cls, frag, kind, _ = tissue_classes(np.random.default_rng([4, i]), 1024, 3, "left", np.zeros(4), inst)
            share = (kind == 1).sum() / (kind >= 0).sum()
            assert abs(share - 0.5) < 0.03, (inst, i, share)
            for f in np.unique(frag[kind >= 0]):
                y_large = np.nonzero((frag == f) & (kind == 1))[0].mean()
                y_small = np.nonzero((frag == f) & (kind == 0))[0].mean()
                assert (y_large < y_small) == above, (inst, i, f)


def test_discordant_fragments_follow_the_documented_rate():
    flips, sides = [], []
    for i in range(300):
        cls, frag, kind, flipped = tissue_classes(np.random.default_rng([9, i]), 512, 4, "right", np.zeros(4),
                                                  discordant_fragments=0.3)
        flips.extend(flipped.tolist())
        small_frag = frag
        for f in range(4):  # where the tumour sits in each fragment, from the class map alone
            xs = np.nonzero(small_frag == f)[1]
            tum = np.nonzero((small_frag == f) & (cls == 1 + CLASSES.index("tumour")))[1]
            if len(tum):
                sides.append((tum.mean() > xs.mean()) != bool(flipped[f]))
    assert abs(np.mean(flips) - 0.3) < 0.04, np.mean(flips)
    assert np.mean(sides) > 0.97  # the non-flipped fragments have the tumour on the right, the flipped on the left


def test_truth_md_documents_every_mechanism(small_synth):
    syn, truth = small_synth
    text = (syn / "truth.md").read_text()
    assert text.startswith(MECHANISMS), "truth.md does not open with the mechanisms as documented in MECHANISMS"
    for key in ("tumour_side", "genomic_instability", "program_metabolic", "methylation 0.3", "difficulty"):
        assert key in MECHANISMS, key
    # then this cohort's settings and its measured modality rates (the conftest cohort: seed 3, 160 patients)
    assert "Seed 3, 160 patients, difficulty 1;" in text, text[len(MECHANISMS):]
    for m in ("wsi", "rna", "methylation"):
        assert f"| {m} | {MODALITY_RATES[m]:.2f} | {truth[f'has_{m}'].mean():.3f} |" in text, (m, text[len(MECHANISMS):])
    assert {"genomic_instability", "program_metabolic"} <= set(truth.columns)
    clinical = pd.read_csv(syn / "clinical.tsv", sep="\t")
    assert "genomic_instability" in clinical and "program_metabolic" not in clinical
