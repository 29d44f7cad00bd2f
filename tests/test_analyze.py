"""``pathalign analyze adapters`` on models trained on the synthetic cohort: true pairing vs shuffled patients."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from pathalign.cohort import CohortSources, build_cohort
from pathalign.train.trainer import TrainConfig, Trainer

pytestmark = pytest.mark.slow  # trains several models (about a minute on 2 cores)

MOLECULAR = ["rna", "snp", "cnv", "methylation"]


def _shuffled_synth(syn, out, seed=0):
    """The synthetic tables with the sample ids of every non-RNA modality permuted (independently):
    the same values and missingness, but no patient's profiles belong together any more."""
    rng = np.random.default_rng(seed)
    out.mkdir()
    for name in ("cnv_gistic.tsv", "methylation_beta.tsv.gz"):
        df = pd.read_csv(syn / name, sep="\t")
        cols = list(df.columns[1:])
        df.columns = [df.columns[0]] + [cols[i] for i in rng.permutation(len(cols))]
        df.to_csv(out / name, sep="\t", index=False)
    lines = (syn / "mutations.maf").read_text().splitlines()
    head = [ln for ln in lines if ln.startswith("#")]
    maf = pd.read_csv(syn / "mutations.maf", sep="\t", comment="#")
    barcodes = sorted(maf.Tumor_Sample_Barcode.unique())
    mapping = dict(zip(barcodes, [barcodes[i] for i in rng.permutation(len(barcodes))]))
    maf["Tumor_Sample_Barcode"] = maf.Tumor_Sample_Barcode.map(mapping)
    (out / "mutations.maf").write_text("\n".join(head) + "\n" + maf.to_csv(sep="\t", index=False))
    return out


def _cohort(syn, tables, out):
    build_cohort(CohortSources(clinical=str(syn / "clinical.tsv"), slides=str(syn / "slides.tsv"),
                               rna=str(syn / "rna_tpm.tsv.gz"), maf=[str(tables / "mutations.maf")],
                               cnv=str(tables / "cnv_gistic.tsv"), methylation=str(tables / "methylation_beta.tsv.gz")),
                 out, progress=False)
    return out


def _train(cohort, run):
    cfg = TrainConfig.from_preset("tiny", steps=120, batch_size=32, progress=False, seed=0, modalities=MOLECULAR,
                                  checkpoint_every=1000, diagnostics_every=0, val_every=0)
    Trainer(cohort, run, cfg).fit()
    return run / "model"  # the step-120 model: no validation-based selection (val_every=0), as these checks assume


def _analyze(model, cohort, out):
    cmd = [sys.executable, "-m", "pathalign", "analyze", "adapters", "--model", str(model), "--cohort", str(cohort),
           "--out", str(out), "--null-draws", "60"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads((out / "adapters.json").read_text())


@pytest.fixture(scope="module")
def analyses(small_synth, small_cohort, tmp_path_factory):
    syn, _ = small_synth
    tmp = tmp_path_factory.mktemp("analyze")
    true = _analyze(_train(small_cohort, tmp / "run_true"), small_cohort, tmp / "an_true")
    shuffled_cohort = _cohort(syn, _shuffled_synth(syn, tmp / "shuffled"), tmp / "cohort_shuffled")
    shuffled = _analyze(_train(shuffled_cohort, tmp / "run_shuffled"), shuffled_cohort, tmp / "an_shuffled")
    return true, shuffled, tmp


def test_shared_signal_ranks_above_the_null_and_above_a_shuffled_model(analyses):
    true, shuffled, _ = analyses
    t = [r for r in true["same_target"] if "cka" in r]
    s = [r for r in shuffled["same_target"] if "cka" in r]
    assert len(t) == 12 and len(s) == 12  # 4 targets x 3 source pairs
    def excess(rows, level="mean"):  # CKA above the null (its mean or 95th percentile), mean over comparisons
        return float(np.mean([r["cka"] - r["null"][level] for r in rows]))

    frac_t, frac_s = np.mean([r["above_null"] for r in t]), np.mean([r["above_null"] for r in s])
    detail = {"true": [(r["target"], r["sources"], round(r["cka"], 3), round(r["null"]["q95"], 3)) for r in t],
              "shuffled": [(r["target"], r["sources"], round(r["cka"], 3), round(r["null"]["q95"], 3)) for r in s]}
    assert frac_t >= 0.5 and frac_s <= 0.25 and frac_t >= frac_s + 0.4, detail
    assert excess(t) > 0.02 and abs(excess(s)) < 0.02, detail  # shuffled: at chance; true: above it
    assert excess(t, "q95") > excess(s, "q95") + 0.02, detail


def test_outputs_and_attribution_name_input_features(analyses):
    true, _, tmp = analyses
    out = tmp / "an_true"
    assert (out / "adapters.png").is_file() and (out / "attribution.png").is_file()
    md = (out / "adapters.md").read_text()
    assert "| rna | cnv vs methylation |" in md
    assert set(true["attribution"]) == {f"{a}->{b}" for a in MOLECULAR for b in MOLECULAR if a != b}
    snp_top = true["attribution"]["snp->cnv"]["top"]
    features = json.loads((tmp / "run_true" / "model" / "config.json").read_text())["preprocessing"]["snp"]["features"]
    assert len(snp_top) == 20 and {f["feature"] for f in snp_top} <= set(features)  # the model's own input names
    scores = [f["score"] for f in snp_top]
    assert scores == sorted(scores, reverse=True) and scores[0] > scores[-1] > 0
    assert f"- **snp->cnv** (n={true['attribution']['snp->cnv']['patients']}): " + \
        ", ".join(f["feature"] for f in snp_top[:8]) in md
    # whether the ranking finds the planted genes: test_analyze_attribution.py


def test_model_cohort_mismatch_is_a_clear_error(analyses, small_cohort, tmp_path):
    import shutil

    _, _, tmp = analyses
    bad = tmp_path / "model"
    shutil.copytree(tmp / "run_true" / "model", bad)
    cfg = json.loads((bad / "config.json").read_text())
    cnv = cfg["preprocessing"]["cnv"]
    cnv["features"] = [f"NOT_A_GENE_{i}" for i in range(len(cnv["features"]))]
    (bad / "config.json").write_text(json.dumps(cfg))
    proc = subprocess.run([sys.executable, "-m", "pathalign", "analyze", "adapters", "--model", str(bad), "--cohort",
                           str(small_cohort), "--out", str(tmp_path / "o")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "cnv features are in the cohort" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
