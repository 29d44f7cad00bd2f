"""Collapse and imbalance diagnostics logged during training."""
from __future__ import annotations

import json

import pandas as pd
import torch

from pathalign.train.trainer import TrainConfig, Trainer

MOLECULAR = ["rna", "snp", "cnv", "methylation"]


def _cfg(**kw):
    base = dict(steps=40, batch_size=32, progress=False, seed=0, modalities=MOLECULAR, diagnostics_every=20,
                checkpoint_every=1000)
    base.update(kw)
    return TrainConfig.from_preset("tiny", **base)


def test_healthy_run_logs_diagnostics_and_stays_quiet(small_cohort, tmp_path, capsys):
    run = tmp_path / "run"
    metrics = Trainer(small_cohort, run, _cfg()).fit()
    log = pd.read_csv(run / "diagnostics.csv")
    assert log.step.tolist() == [20, 40]
    for m in MOLECULAR:
        assert (log[f"erank/{m}"] > 2).all() and (log[f"cos/{m}"] < 0.95).all(), m
    shares = log[[c for c in log if c.startswith("grad_share/")]]
    assert len(shares.columns) == 6 and (shares.sum(axis=1) - 1).abs().max() < 1e-9
    assert metrics["diagnostics"]["warnings"] == []
    assert json.loads((run / "train_metrics.json").read_text())["diagnostics"]["step"] == 40
    md = (run / "diagnostics.md").read_text()
    last = log.iloc[-1]
    for m in MOLECULAR:  # one row per modality with the last logged figures and the verdict of a healthy run
        assert f"| {m} | " in md and f"| {last[f'erank/{m}']:.2f} | {last[f'cos/{m}']:.3f} | no |" in md, (m, md)
    assert "collapsing" not in capsys.readouterr().err


def test_a_collapsed_encoder_is_flagged_during_training(small_cohort, tmp_path, capsys):
    trainer = Trainer(small_cohort, tmp_path / "run", _cfg(steps=20))
    with torch.no_grad():
        trainer.model.encoders["cnv"].proj.weight.zero_()  # every patient's CNV embedding is the same vector
    trainer.model.encoders["cnv"].proj.weight.requires_grad_(False)
    metrics = trainer.fit()
    assert any("'cnv' is collapsing" in w for w in metrics["diagnostics"]["warnings"])
    assert not any("'rna'" in w for w in metrics["diagnostics"]["warnings"])
    assert "'cnv' is collapsing" in capsys.readouterr().err
