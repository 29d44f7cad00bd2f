"""Inference-time missing-modality degradation on embeddings with a planted signal."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from pathalign.evaluate.missing import ALL, HidingPlan, degradation, fused_matrix, patient_blocks, summarise, verdict
from pathalign.evaluate.probes import linear_probe
from pathalign.evaluate.tasks import Task


def _planted(seed: int = 0, n: int = 150):
    """Label carried strongly by RNA, weakly by the slide, not at all by SNP; RNA and slide share a latent."""
    rng = np.random.default_rng(seed)
    pids = [f"P{i:03d}" for i in range(n)]
    y = rng.integers(0, 3, n)
    centres = rng.standard_normal((3, 8)) * 2.0
    latent = rng.standard_normal((n, 6))
    wsi = np.concatenate([0.4 * centres[y] + rng.standard_normal((n, 8)), latent + 0.3 * rng.standard_normal((n, 6))], 1)
    rna = np.concatenate([centres[y] + 0.5 * rng.standard_normal((n, 8)), latent + 0.3 * rng.standard_normal((n, 6))], 1)
    snp = rng.standard_normal((n, 5))
    has_snp = rng.random(n) < 0.8
    emb = {"wsi": {"ids": np.array([f"{p}-S" for p in pids]), "case_ids": np.array(pids), "embeddings": wsi},
           "rna": {"ids": np.array(pids), "embeddings": rna},
           "snp": {"ids": np.array(pids)[has_snp], "embeddings": snp[has_snp]},
           "pairs": {"wsi-rna": {"wsi": wsi[:, 8:], "rna": rna[:, 8:]}}}  # rows as in the modality groups
    folds = {}
    for k in range(3):
        part = np.array(["train"] * n, dtype=object)
        part[np.arange(n) % 3 == k] = "test"
        part[np.arange(n) % 3 == (k + 1) % 3] = "val"
        folds[f"fold_{k}"] = part
    table = pd.DataFrame({"case_id": pids, "label": y.astype(str), **folds})
    return emb, Task("planted", "classification", "label", table)


def test_hiding_plan_is_patient_level_exact_nested_and_seeded():
    ids = [f"P{i}" for i in range(41)]
    plan = HidingPlan.draw({"rna": ids, "snp": ids[:20]}, seed=3)
    prev = set()
    for r in (0, 0.25, 0.5, 0.75, 1):
        h = plan.hidden("rna", r)
        assert len(h) == round(r * 41) and prev <= h  # exact fraction, nested across rates
        prev = h
    assert plan.hidden("snp", 1.0) == set(ids[:20])
    assert HidingPlan.draw({"rna": ids}, 3).hidden("rna", 0.5) == plan.hidden("rna", 0.5)
    assert HidingPlan.draw({"rna": ids}, 4).hidden("rna", 0.5) != plan.hidden("rna", 0.5)
    with pytest.raises(ValueError, match="missing rate"):
        plan.hidden("rna", 1.5)


@pytest.fixture(scope="module")
def planted_curves():
    emb, task = _planted()
    df = degradation(emb, [task], rates=[0, 0.25, 0.5, 0.75, 1.0], seeds=[0, 1, 2])
    return emb, task, df


def test_degradation_follows_the_planted_signal(planted_curves):
    _, _, df = planted_curves
    s = summarise(df)
    task = s[(s.kind == "task")].set_index(["hidden", "rate"])["mean"]
    at0 = {h: task[(h, 0.0)] for h in ("rna", "snp", ALL)}
    assert len(set(np.round(list(at0.values()), 12))) == 1  # nothing hidden: one probe, one score
    assert task[("rna", 1.0)] < task[("rna", 0.0)] - 0.15  # the label lives in RNA
    assert abs(task[("snp", 1.0)] - task[("snp", 0.0)]) < 0.05  # SNP carries nothing
    rna = [task[("rna", r)] for r in (0, 0.25, 0.5, 0.75, 1.0)]
    ci = s[(s.kind == "task") & (s.hidden == "rna")].sort_values("rate")
    half = (ci.ci_high - ci.ci_low).to_numpy() / 2
    assert all(rna[i + 1] <= rna[i] + half[i] + half[i + 1] for i in range(4)), rna  # monotone within CI
    v = verdict(s)
    rna_row = v[(v.kind == "task") & (v.hidden == "rna")].iloc[0]
    assert rna_row["drop"] > 0.15 and rna_row["shape"] == "graceful"  # nested hiding: an even slope


def test_all_hidden_equals_a_probe_on_slide_only_test_rows(planted_curves):
    emb, task, df = planted_curves
    blocks = patient_blocks(emb, ["wsi", "rna", "snp"])
    t = task.table
    scores = []
    for f in task.folds:
        ids = {r: t.case_id[t[f] == r].tolist() for r in ("train", "val", "test")}
        y = {r: t.label[t[f] == r].to_numpy() for r in ids}
        hide = {m: set(blocks[m]) for m in ("rna", "snp")}  # rate 1: every patient loses RNA and SNP
        m = linear_probe(fused_matrix(blocks, ids["train"], ids["train"]), y["train"],
                         fused_matrix(blocks, ids["val"], ids["train"]), y["val"],
                         fused_matrix(blocks, ids["test"], ids["train"], hide), y["test"], seed=0)
        scores.append(m["balanced_accuracy"])
    ours = df[(df.kind == "task") & (df.hidden == ALL) & (df.rate == 1.0) & (df.seed == 0)].value.iloc[0]
    assert ours == pytest.approx(np.mean(scores), abs=1e-12)


def test_retrieval_counts_only_patients_with_both_sides(planted_curves):
    emb, _, df = planted_curves
    r = df[(df.kind == "retrieval") & (df.hidden == "rna")]
    n_all = len(emb["rna"]["ids"])
    for rate, n in zip(r.rate, r.n):
        assert n == n_all - round(rate * n_all) or (rate == 1.0 and n == 0)
    kept = r[r.rate == 0].iloc[0]
    assert kept.value > 3 * kept.chance  # the planted shared latent is retrievable
    assert r[r.rate == 0.5].chance.iloc[0] == pytest.approx(5 / (n_all - round(0.5 * n_all)))


def test_summary_interval_is_the_t_interval_over_seeds(planted_curves):
    _, _, df = planted_curves
    s = summarise(df)
    row = s[(s.kind == "task") & (s.hidden == "rna") & (s.rate == 0.5)].iloc[0]
    v = df[(df.kind == "task") & (df.hidden == "rna") & (df.rate == 0.5)].value.to_numpy()
    lo, hi = stats.t.interval(0.95, len(v) - 1, loc=v.mean(), scale=stats.sem(v))
    assert (row.ci_low, row.ci_high) == pytest.approx((lo, hi), rel=1e-10)


def test_verdict_tells_a_cliff_from_a_slope():
    rates = [0, 0.25, 0.5, 0.75, 1.0]
    rows = [{"kind": "task", "name": "t", "metric": "m", "hidden": h, "rate": r, "mean": v}
            for h, vals in {"slope": [0.9, 0.8, 0.7, 0.6, 0.5], "cliff": [0.9, 0.88, 0.5, 0.49, 0.48]}.items()
            for r, v in zip(rates, vals)]
    v = verdict(pd.DataFrame(rows)).set_index("hidden")
    assert v.loc["slope", "shape"] == "graceful" and v.loc["cliff", "shape"] == "cliff"
    assert v.loc["slope", "drop"] == pytest.approx(0.4)


@pytest.mark.slow
def test_curves_of_a_model_trained_with_modality_dropout_are_monotone_within_ci(small_cohort, tmp_path):
    """On a model trained with modality dropout, hiding more never helps beyond the seeds' interval."""
    from pathalign.cohort import load_cohort
    from pathalign.evaluate.embed import embed_with_model
    from pathalign.evaluate.tasks import derive_tasks
    from pathalign.io.embeddings import read_embeddings
    from pathalign.train.trainer import TrainConfig, Trainer

    cfg = TrainConfig.from_preset("tiny", steps=80, batch_size=32, progress=False, seed=0, modality_dropout=0.3,
                                  modalities=["rna", "snp", "cnv", "methylation"], checkpoint_every=1000,
                                  diagnostics_every=0)
    Trainer(small_cohort, tmp_path / "run", cfg).fit()
    embed_with_model(tmp_path / "run" / "model", small_cohort, tmp_path / "emb.h5", progress=False)
    emb = read_embeddings(tmp_path / "emb.h5")
    tasks = [t for t in derive_tasks(load_cohort(small_cohort).manifest, 3, 0)
             if t.task_type == "classification" and not t.error]
    assert tasks
    s = summarise(degradation(emb, tasks, rates=[0, 0.5, 1.0], seeds=[0, 1, 2]))
    curves = s[(s.kind == "task") & (s.hidden == ALL)]
    for name, g in curves.groupby("name"):
        g = g.sort_values("rate")
        m, half = g["mean"].to_numpy(), np.nan_to_num((g.ci_high - g.ci_low).to_numpy() / 2)
        for i in range(len(m) - 1):
            assert m[i + 1] <= m[i] + half[i] + half[i + 1] + 1e-9, (name, m.tolist(), half.tolist())
        assert m[-1] < m[0], (name, m.tolist())  # every molecular modality hidden: this model has nothing left
