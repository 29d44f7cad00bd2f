"""Training-time missingness (``--train-missing-rate``, the ``train-missing-<r>`` ablation arms): the hidden
data are never seen in training, the hiding is the planned one, and the ablation draws its curve."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from helpers import seeded_rng
from pathalign.cohort.model_view import CohortData
from pathalign.evaluate.ablate import (
    TRAIN_MISSING_RATES,
    _train_patients,
    arms,
    missing_arm,
    training_missing_curve,
    write_training_missing,
)
from pathalign.hiding import hidden_in_training
from pathalign.models.preprocessing import MODEL_TRANSFORMS
from pathalign.train.trainer import TrainConfig, Trainer, TrainingError

MOLECULAR = ["rna", "snp", "cnv", "methylation"]


def _trainer(cohort, run, rate, seed=1, **kw):
    cfg = TrainConfig.from_preset("tiny", steps=2, batch_size=8, modalities=MOLECULAR, train_missing_rate=rate,
                                  seed=seed, progress=False, diagnostics_every=0, **kw)
    return Trainer(cohort, run, cfg)


def test_hidden_training_data_are_the_planned_patients_and_never_reach_a_batch(small_cohort, tmp_path):
    t = _trainer(small_cohort, tmp_path / "run", 0.5)
    man = t.cohort.manifest
    train = set(t.splits["train"])
    for m in MOLECULAR:
        have = man.case_id[man.case_id.isin(train) & man[f"has_{m}"]].astype(str)
        hidden = t.hidden[m]
        # the rule, computed here: round(rate * n) of the training patients that have m, all of them training ones
        assert len(hidden) == round(0.5 * len(have)) and hidden <= set(have), m
        for pid, has in zip(man.case_id.astype(str), man[f"has_{m}"]):
            assert t.data.valid[m][t.data.index[pid]] == (bool(has) and pid not in hidden), (m, pid)
        assert (t.data.arrays[m][[t.data.index[p] for p in hidden]] == 0).all()
        val_with_m = man.case_id[man.case_id.isin(set(t.splits["val"])) & man[f"has_{m}"]]
        assert len(val_with_m) and all(t.data.valid[m][t.data.index[p]] for p in val_with_m)  # validation keeps its data
    assert t.model.training_info["data"]["hidden_in_training"] == {m: len(t.hidden[m]) for m in MOLECULAR}
    # a training patient is one with >= 2 modalities left after hiding
    n_left = sum(t.data.valid[m] for m in MOLECULAR)
    assert set(t.train_idx.tolist()) == {t.data.index[p] for p in train if n_left[t.data.index[p]] >= 2}
    assert _train_patients(man, MOLECULAR, t.cfg, complete=False) == len(t.train_idx)
    for step in range(6):
        b = t.batches[step]
        for r, pid in enumerate(b["patients"]):
            for m in MOLECULAR:
                if pid in t.hidden[m]:
                    assert not bool(b["valid"][m][r]) and not b[m][r].any(), (step, pid, m)


def test_the_preprocessing_is_fitted_without_the_hidden_patients(small_cohort, tmp_path):
    t = _trainer(small_cohort, tmp_path / "run", 0.75)
    train = list(t.splits["train"])
    for m in ("rna", "methylation"):
        without = CohortData(t.cohort, None, [m], [p for p in train if p not in t.hidden[m]], transforms=MODEL_TRANSFORMS)
        with_all = CohortData(t.cohort, None, [m], train, transforms=MODEL_TRANSFORMS)
        assert json.dumps(t.data.preprocessing[m], sort_keys=True, default=str) == \
            json.dumps(without.preprocessing[m], sort_keys=True, default=str), m
        assert json.dumps(t.data.preprocessing[m], sort_keys=True, default=str) != \
            json.dumps(with_all.preprocessing[m], sort_keys=True, default=str), m


def test_hiding_is_nested_across_rates_and_seeded(small_cohort):
    from pathalign.cohort import load_cohort

    man = load_cohort(small_cohort).manifest
    train = man.case_id.astype(str).tolist()[::2]
    h = {r: hidden_in_training(man, train, MOLECULAR, r, seed=4) for r in (0.25, 0.5, 0.75, 1.0)}
    for m in MOLECULAR:
        assert h[0.25][m] <= h[0.5][m] <= h[0.75][m] <= h[1.0][m]
        assert h[1.0][m] == set(man.case_id[man.case_id.isin(train) & man[f"has_{m}"]].astype(str))
    assert hidden_in_training(man, train, MOLECULAR, 0.0, seed=4) == {}
    assert hidden_in_training(man, train, MOLECULAR, 0.5, seed=5)["rna"] != h[0.5]["rna"]


def test_bad_rate_and_resume_with_another_rate_are_refused(small_cohort, tmp_path):
    with pytest.raises(ValueError, match="train_missing_rate"):
        TrainConfig(train_missing_rate=1.5)
    t = _trainer(small_cohort, tmp_path / "run", 0.25)
    t.fit()
    with pytest.raises(TrainingError, match="train_missing_rate"):
        cfg = TrainConfig.from_preset("tiny", steps=2, batch_size=8, modalities=MOLECULAR, train_missing_rate=0.5,
                                      seed=1, progress=False, diagnostics_every=0)
        Trainer(small_cohort, tmp_path / "run", cfg, resume=True)


def test_the_ablation_has_the_missing_rate_arms():
    names = arms("tiny", ["wsi", "rna", "snp"])
    for r in TRAIN_MISSING_RATES:
        assert names[missing_arm(r)].train_missing_rate == r
    assert missing_arm(0.5) == "train-missing-0.5"
    assert not any(n.startswith("train-missing") for n in arms("tiny", ["wsi"]))


def test_training_missing_curve_is_the_seed_mean_and_t_interval_per_rate(tmp_path):
    import scipy.stats

    rng = seeded_rng()
    per_seed = {}
    for s in range(3):
        per_seed[s] = {}
        for arm in ["full", *map(missing_arm, TRAIN_MISSING_RATES), "no-rope"]:
            per_seed[s][arm] = {"cancer_type balanced_accuracy": float(rng.uniform(0.3, 0.9)),
                                "wsi-rna recall@5": float(rng.uniform(0.2, 0.8)), "wsi-rna chance@5": 0.2}
    long = training_missing_curve(per_seed)
    assert set(long.rate) == {0.0, *TRAIN_MISSING_RATES}
    assert "no-rope" not in long.to_string() and not long.metric.str.startswith("chance").any()
    res = write_training_missing(per_seed, tmp_path)
    assert (tmp_path / "training_missing.png").stat().st_size > 0
    summary = pd.read_csv(tmp_path / "training_missing.csv")
    for rate, arm in [(0.0, "full"), *((r, missing_arm(r)) for r in TRAIN_MISSING_RATES)]:
        for key in ("cancer_type balanced_accuracy", "wsi-rna recall@5"):
            name, metric = key.rsplit(" ", 1)
            x = np.array([per_seed[s][arm][key] for s in range(3)])
            row = summary[(summary.name == name) & (summary.metric == metric) & np.isclose(summary.rate, rate)]
            half = scipy.stats.t.ppf(0.975, 2) * x.std(ddof=1) / np.sqrt(3)
            assert row["mean"].item() == pytest.approx(x.mean()), (rate, key)
            assert row["ci_high"].item() == pytest.approx(x.mean() + half), (rate, key)
    assert {r["name"] for r in res["summary"]} == {"cancer_type", "wsi-rna"}
    assert training_missing_curve({0: {"full": {"a b": 1.0}}}) is None


def test_a_checkpoint_from_before_the_option_resumes_as_rate_zero(small_cohort, tmp_path):
    """A checkpoint written before ``train_missing_rate`` existed has no such key: it was trained at rate 0,
    so resuming it at rate 0 goes on and resuming it at another rate is refused."""
    import torch

    _trainer(small_cohort, tmp_path / "run", 0.0, checkpoint_every=1).fit()
    ckpt = tmp_path / "run" / "checkpoints" / (tmp_path / "run" / "checkpoints" / "latest.txt").read_text().strip()
    state = torch.load(ckpt, weights_only=True)
    saved = json.loads(state["train_config"])
    del saved["train_missing_rate"]
    state["train_config"] = json.dumps(saved)
    torch.save(state, ckpt)
    cfg = dict(steps=2, batch_size=8, modalities=MOLECULAR, seed=1, progress=False, diagnostics_every=0)
    Trainer(small_cohort, tmp_path / "run", TrainConfig.from_preset("tiny", train_missing_rate=0.0, **cfg), resume=True)
    with pytest.raises(TrainingError, match="train_missing_rate"):
        Trainer(small_cohort, tmp_path / "run", TrainConfig.from_preset("tiny", train_missing_rate=0.5, **cfg),
                resume=True)


def test_a_rate_that_leaves_a_modality_no_training_patient_is_a_clear_error(small_cohort, tmp_path):
    from pathalign.errors import PathalignError

    with pytest.raises(PathalignError, match=r"--train-missing-rate 1 hides rna for (\d+) of its \1 training "
                                             r"patients, leaving 0"):
        _trainer(small_cohort, tmp_path / "run", 1.0)
