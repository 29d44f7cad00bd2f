"""Model selection on validation, the split's notes, pretrain-rna on the training split, the dominance rule."""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from helpers import Killed, killed_after_checkpoint, seeded_rng
from pathalign.cohort import load_cohort
from pathalign.models.preprocessing import make_transform
from pathalign.train.data import split_patients
from pathalign.train.trainer import TrainConfig, Trainer, TrainingError

MOLECULAR = ["rna", "snp", "cnv", "methylation"]


def _cfg(**kw):
    base = dict(steps=10, batch_size=32, progress=False, seed=0, modalities=MOLECULAR, diagnostics_every=0,
                checkpoint_every=1000, val_every=2)
    base.update(kw)
    return TrainConfig.from_preset("tiny", **base)


@pytest.fixture
def no_plot(monkeypatch):
    """Skip the loss plot (matplotlib is most of a short run's time) where a test does not look at it."""
    monkeypatch.setattr("pathalign.train.plots.plot_loss_curves", lambda *a, **k: None)


def _plant(monkeypatch, planted: dict[int, tuple[float, float]]):
    """Validation scores ``{step: (recall@5 mean, loss)}`` instead of the real ones; returns the weights seen per step."""
    from pathalign.train import validation as validation_mod

    seen: dict[int, dict] = {}

    def fake_score(self, model, step):
        seen[step] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        recall, loss = planted[step]
        return validation_mod.ValidationScore(step, loss, {"rna-snp": recall})

    monkeypatch.setattr(validation_mod.ValidationScorer, "score", fake_score)
    return seen


def _weights(folder) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def _assert_same(weights: dict, state: dict, what: str):
    assert set(weights) == set(state), what
    for k, v in weights.items():
        assert torch.equal(v, state[k]), f"{what}: {k}"


def test_export_is_the_planted_best_validation_step(small_cohort, tmp_path, monkeypatch):
    # (recall, loss): step 6 ties step 4 on recall with a lower loss, step 10 ties step 6 exactly
    # (the earlier wins), step 8's NaN recall never counts
    planted = {2: (0.5, 3.0), 4: (0.9, 2.0), 6: (0.9, 1.5), 8: (float("nan"), 0.1), 10: (0.9, 1.5)}
    seen = _plant(monkeypatch, planted)
    run = tmp_path / "run"
    metrics = Trainer(small_cohort, run, _cfg()).fit()
    assert sorted(seen) == [2, 4, 6, 8, 10]
    _assert_same(_weights(run / "model"), seen[6], "model/ = step 6")
    _assert_same(_weights(run / "model-last"), seen[10], "model-last/ = step 10")
    assert not all(torch.equal(seen[6][k], seen[10][k]) for k in seen[6])  # the two steps do differ
    sel = json.loads((run / "model" / "config.json").read_text())["training"]["selection"]
    assert sel["step"] == 6 and sel["final_step"] == 10 and sel["metric"] == "val/recall@5"
    assert sel["value"] == pytest.approx(0.9) and "recall@5" in sel["reason"]
    assert metrics["selection"]["step"] == 6
    card = (run / "model" / "README.md").read_text()
    assert "## Model selection" in card and "step 6 of 10" in card
    last = json.loads((run / "model-last" / "config.json").read_text())["training"]["selection"]
    assert last["step"] == 10
    log = pd.read_csv(run / "log.csv")
    assert log.dropna(subset=["val/loss"]).step.tolist() == [2, 4, 6, 8, 10]
    assert log.loc[log.step == 4, "val/recall@5"].item() == pytest.approx(0.9)
    assert (run / "loss_curves.png").is_file()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tb = EventAccumulator(str(run / "tb"))
    tb.Reload()
    assert [e.step for e in tb.Scalars("val/loss")] == [2, 4, 6, 8, 10]
    assert [e.step for e in tb.Scalars("val/recall@5")] == [2, 4, 6, 10]  # step 8's NaN is left out


def test_selection_on_loss_and_fallback_when_no_pair_has_enough_patients(small_cohort, tmp_path, monkeypatch, no_plot):
    from pathalign.train import validation as validation_mod

    planted = {2: (0.1, 3.0), 4: (0.9, 2.0), 6: (0.2, 1.0), 8: (0.3, 1.2), 10: (0.3, 1.1)}
    seen = _plant(monkeypatch, planted)
    Trainer(small_cohort, tmp_path / "loss", _cfg(select_metric="loss")).fit()
    _assert_same(_weights(tmp_path / "loss" / "model"), seen[6], "lowest val loss = step 6")
    monkeypatch.setattr(validation_mod, "MIN_PAIR_PATIENTS", 10_000)  # no pair has that many validation patients
    seen = _plant(monkeypatch, planted)
    Trainer(small_cohort, tmp_path / "fallback", _cfg()).fit()
    sel = json.loads((tmp_path / "fallback" / "model" / "config.json").read_text())["training"]["selection"]
    assert sel["step"] == 6 and sel["metric"] == "val/loss" and "instead of recall@5" in sel["reason"]


def test_early_stopping_stops_and_a_resume_does_not_train_on(small_cohort, tmp_path, monkeypatch, no_plot):
    planted = {2: (0.5, 3.0), 4: (0.8, 2.0), 6: (0.7, 1.9), 8: (0.6, 1.8), 10: (0.9, 1.0), 12: (0.9, 1.0)}
    seen = _plant(monkeypatch, planted)
    run = tmp_path / "run"
    cfg = _cfg(steps=40, early_stopping_patience=2)
    metrics = Trainer(small_cohort, run, cfg).fit()
    assert metrics["steps"] == 8 and sorted(seen) == [2, 4, 6, 8]
    assert len(pd.read_csv(run / "log.csv")) == 8
    _assert_same(_weights(run / "model"), seen[4], "model/ = step 4")
    sel = json.loads((run / "model" / "config.json").read_text())["training"]["selection"]
    assert sel["early_stopped"] and sel["step"] == 4 and "early stopping" in sel["reason"]
    again = Trainer(small_cohort, run, cfg, resume=True).fit()
    assert again["steps"] == 8 and sorted(seen) == [2, 4, 6, 8]
    _assert_same(_weights(run / "model"), seen[4], "resumed model/ = step 4")
    with pytest.raises(TrainingError, match="different select_metric.*'recall@5'.*'loss'"):
        Trainer(small_cohort, run, _cfg(steps=40, early_stopping_patience=2, select_metric="loss"), resume=True)


def test_train_cli_flags_reach_the_config(small_cohort, tmp_path, capsys, no_plot):
    from pathalign.cli import main

    run = tmp_path / "run"
    assert main(["train", "--cohort", str(small_cohort), "--out", str(run), "--steps", "4", "--val-every", "2",
                 "--select-metric", "loss", "--early-stopping-patience", "3", "--stratify", "none",
                 "--modalities", "rna,snp", "--diagnostics-every", "0", "--quiet", "--device", "cpu"]) == 0
    out = capsys.readouterr()
    training = json.loads((run / "model" / "config.json").read_text())["training"]
    cfg = training["config"]
    assert (cfg["val_every"], cfg["select_metric"], cfg["early_stopping_patience"], cfg["stratify"]) == (2, "loss", 3, "")
    assert "unstratified" in out.err and "not in the cohort manifest" not in out.err
    assert f"step {training['selection']['step']}, val/loss" in out.out and "model-last" in out.out




def test_selection_is_the_same_after_a_kill_and_resume(small_cohort, tmp_path, monkeypatch, no_plot):
    cfg = _cfg(steps=12, checkpoint_every=6, val_every=3, modality_dropout=0.2)
    full = Trainer(small_cohort, tmp_path / "full", cfg).fit()
    original = Trainer.save_checkpoint
    monkeypatch.setattr(Trainer, "save_checkpoint", killed_after_checkpoint(6))
    with pytest.raises(Killed):
        Trainer(small_cohort, tmp_path / "resumed", cfg).fit()
    monkeypatch.setattr(Trainer, "save_checkpoint", original)
    resumed = Trainer(small_cohort, tmp_path / "resumed", cfg, resume=True).fit()
    assert resumed["selection"] == full["selection"]
    for name in ("model", "model-last"):
        _assert_same(_weights(tmp_path / "resumed" / name), _weights(tmp_path / "full" / name), name)
    a, b = pd.read_csv(tmp_path / "full" / "log.csv"), pd.read_csv(tmp_path / "resumed" / "log.csv")
    cols = [c for c in a if c.startswith("val/")]
    pd.testing.assert_frame_equal(a[["step", *cols]], b[["step", *cols]])


def test_validation_recall_equals_the_evaluate_path(small_cohort, tmp_path, no_plot):
    """The scorer's recall@5 = bench's cross-modal retrieval on the embedded validation patients, both ways."""
    from pathalign.evaluate.embed import embed_with_model
    from pathalign.evaluate.retrieval import cross_modal_retrieval
    from pathalign.io.embeddings import read_embeddings

    trainer = Trainer(small_cohort, tmp_path / "run", _cfg(steps=6, val_every=6, select_metric="last"))
    trainer.fit()
    score = trainer.validation.scorer.score(trainer.model, 6)
    assert score.recall, "no pair scored"
    embed_with_model(tmp_path / "run" / "model", small_cohort, tmp_path / "emb.h5", progress=False)
    emb = read_embeddings(tmp_path / "emb.h5")
    val = set(trainer.splits["val"])
    for key, ours in score.recall.items():
        a, b = key.split("-")
        ref = 0.5 * (cross_modal_retrieval(emb, a, b, val)["recall@5"] + cross_modal_retrieval(emb, b, a, val)["recall@5"])
        assert ours == pytest.approx(ref, abs=1e-9), key
    assert math.isfinite(score.loss) and score.loss > 0


def test_a_missing_stratify_column_is_said_and_the_split_sizes_printed(small_cohort, tmp_path, capsys):
    manifest = load_cohort(small_cohort).manifest
    trainer = Trainer(small_cohort, tmp_path / "run", _cfg(stratify="no_such_column", val_every=None))
    err = capsys.readouterr().err
    assert "stratify column 'no_such_column' is not in the cohort manifest" in err and "unstratified" in err
    ref = split_patients(manifest, 0.2, 0, None)  # the unstratified split
    assert trainer.splits == ref
    assert f"split: {len(ref['train'])} train / {len(ref['val'])} val patients of {len(manifest)}" in err
    Trainer(small_cohort, tmp_path / "run2", _cfg(val_every=None))
    err = capsys.readouterr().err
    ref = split_patients(manifest, 0.2, 0, "cancer_type")
    assert "not in the cohort manifest" not in err and "stratified by 'cancer_type'" in err
    assert f"split: {len(ref['train'])} train / {len(ref['val'])} val patients" in err


@pytest.fixture(scope="module")
def pretrained_fm(small_cohort, tmp_path_factory):
    from pathalign.train.rna_pretrain import pretrain_rna

    out = tmp_path_factory.mktemp("fm") / "fm"
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        metrics = pretrain_rna(small_cohort, out, n_genes=2000, dim=8, depth=0, steps=3, seed=1, progress=True)
    return out, metrics, buf.getvalue()


def test_pretrain_rna_fits_on_the_trainers_training_split_only(small_cohort, pretrained_fm):
    from pathalign.models.rna_fm import RNAFoundationModel

    out, metrics, _ = pretrained_fm
    cohort = load_cohort(small_cohort)
    rna = cohort.matrix("rna")
    split = split_patients(cohort.manifest, 0.2, 1, "cancer_type")  # what 'pathalign train --seed 1' uses
    train = [p for p in rna.index if p in set(split["train"])]
    val = [p for p in rna.index if p in set(split["val"])]
    assert val, "the test needs validation patients with RNA"
    _, prep = RNAFoundationModel.load(out)  # its preprocessing: fitted on the training patients' RNA alone
    ref = make_transform("rna", cohort.meta, n_genes=rna.shape[1]).fit(rna.loc[train]).state_dict()
    assert prep["features"] == ref["features"]
    compared = 0
    for k, v in ref.items():
        if isinstance(v, list) and v and isinstance(v[0], float):
            np.testing.assert_allclose(prep[k], v, rtol=1e-12, err_msg=k)
            compared += 1
    assert compared, ref.keys()
    assert metrics["samples_train"] + metrics["samples_heldout"] == len(train)
    record = json.loads((out / "patients.json").read_text())
    assert sorted(record["fitted_on"]) == sorted(train) and sorted(record["left_out_val"]) == sorted(val)
    assert record["split"] == {"seed": 1, "val_fraction": 0.2, "stratify": "cancer_type"}


def test_pretrain_rna_says_it_uses_all_genes_when_fewer_than_asked(small_cohort, pretrained_fm):
    _, metrics, printed = pretrained_fm
    n = load_cohort(small_cohort).matrix("rna").shape[1]
    assert f"--genes 2000: the cohort has {n} genes; using all {n}" in printed
    assert metrics["genes"] == n
    assert "validation patients with RNA left out" in printed


def test_training_warns_when_its_rna_fm_saw_validation_patients(small_cohort, pretrained_fm, tmp_path, capsys):
    fm, _, _ = pretrained_fm
    Trainer(small_cohort, tmp_path / "same", _cfg(seed=1, rna_fm=str(fm), steps=2, val_every=None))
    assert "foundation model" not in capsys.readouterr().err
    Trainer(small_cohort, tmp_path / "other", _cfg(seed=2, rna_fm=str(fm), steps=2, val_every=None))
    assert "was fitted on" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- dominance
def test_a_dominating_pair_fires_with_two_or_three_pairs_and_a_balanced_one_does_not():
    from pathalign.train.diagnostics import shares, warnings_for

    assert any("a-b dominates" in w for w in warnings_for({}, shares({"a-b": 8.0, "a-c": 1.0, "b-c": 1.0})))
    assert any("a-b dominates" in w for w in warnings_for({}, shares({"a-b": 0.9, "a-c": 0.1})))
    assert warnings_for({}, shares({"a-b": 1.0, "a-c": 1.1, "b-c": 0.9})) == []
    assert warnings_for({}, shares({"a-b": 0.6, "a-c": 0.4})) == []
    assert warnings_for({}, shares({"a-b": 1.0})) == []  # one pair has nothing to dominate


def test_dominance_rule_matches_its_formula_on_random_shares():
    from pathalign.train.diagnostics import DOMINANCE_RATIO, shares, warnings_for

    rng = seeded_rng()
    for _ in range(200):
        n = int(rng.integers(2, 8))
        norms = {f"p{i}": float(v) for i, v in enumerate(rng.lognormal(0, 1.2, n))}
        s = shares(norms)
        top = max(s, key=s.get)
        others = [v for k, v in s.items() if k != top]
        expect = s[top] > DOMINANCE_RATIO * float(np.median(others))
        msgs = warnings_for({}, s)
        assert bool(msgs) == expect and (not msgs or msgs[0].startswith(f"pair {top} dominates")), norms


def test_diagnostics_md_states_a_threshold_that_can_fire(tmp_path):
    from pathalign.models.pathalign_model import PathAlignConfig, PathAlignModel
    from pathalign.train.diagnostics import DiagnosticsLog

    torch.manual_seed(0)
    mods = ["rna", "snp", "cnv"]
    dims = {m: 10 + i for i, m in enumerate(mods)}
    model = PathAlignModel(PathAlignConfig(modalities=mods, input_dims=dims, embed_dim=16, proj_dim=8))
    g = torch.Generator().manual_seed(0)
    batch = {"valid": {m: torch.ones(24, dtype=torch.bool) for m in mods},
             **{m: torch.randn(24, d, generator=g) for m, d in dims.items()}}
    with torch.no_grad():
        for name, adapter in model.pair_heads.adapters.items():
            if name not in ("rna->cnv", "cnv->rna"):
                adapter.weight.zero_()  # the other two pairs see constant logits: no gradient reaches the encoders
    log = DiagnosticsLog(tmp_path, batch, every=1)
    warnings = log.maybe_log(1, model)
    assert any(w.startswith("pair rna-cnv dominates") for w in warnings), warnings
    log.finish()
    md = (tmp_path / "diagnostics.md").read_text()
    assert "3x the median of the other pairs" in md and "300" not in md and "pair rna-cnv dominates" in md
