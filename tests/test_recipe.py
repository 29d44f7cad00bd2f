"""The molecular recipe: the ``molecular`` preset, ``--preset auto``, and the real-TCGA benchmark's helpers."""
from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from helpers import seeded_rng

REPO = Path(__file__).resolve().parents[1]


def _bench_module():
    spec = importlib.util.spec_from_file_location("real_tcga", REPO / "benchmarks" / "real_tcga.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_choose_preset_picks_molecular_for_large_slide_free_cohorts():
    from pathalign.models.presets import MOLECULAR_MIN_PATIENTS, choose_preset

    assert choose_preset(["rna", "methylation"], 769) == "molecular"
    assert choose_preset(["rna", "snp", "cnv"], MOLECULAR_MIN_PATIENTS) == "molecular"
    assert choose_preset(["rna", "methylation"], MOLECULAR_MIN_PATIENTS - 1) == "tiny"  # batch 128 would not fit
    assert choose_preset(["wsi", "rna"], 5000) == "tiny"  # slides: the slide-encoder presets


def test_molecular_preset_is_linear_dropout_encoders_with_its_training_defaults():
    from pathalign import create_model
    from pathalign.train.trainer import TrainConfig

    model = create_model("molecular", modalities=["rna", "methylation"], input_dims={"rna": 12, "methylation": 9})
    enc = model.encoders["rna"]
    assert len(enc.blocks) == 0 and enc.drop.p == 0.3  # Linear -> dropout -> LayerNorm
    cfg = TrainConfig.from_preset("molecular")
    assert (cfg.batch_size, cfg.steps, cfg.lr) == (128, 500, 0.002)
    model.eval()
    x = torch.randn(3, 12)
    manual = torch.nn.functional.layer_norm(enc.proj(x), (64,), enc.norm.weight, enc.norm.bias)
    assert torch.allclose(model.encode_rna(x), manual, atol=1e-6)


def _molecular_cohort(tmp_path: Path, n: int) -> Path:
    from pathalign.cohort import CohortSources, build_cohort

    rng = seeded_rng(n)
    ids = [f"TCGA-AA-{i:04d}-01A" for i in range(n)]
    rna = pd.DataFrame(rng.random((n, 5)) * 10, index=ids, columns=[f"G{i}" for i in range(5)])
    beta = pd.DataFrame(rng.random((n, 4)), index=ids, columns=[f"M{i}" for i in range(4)])
    rna.rename_axis("sample_id").to_csv(tmp_path / "rna.tsv", sep="\t")
    beta.rename_axis("sample_id").to_csv(tmp_path / "meth.tsv", sep="\t")
    out = tmp_path / f"cohort{n}"
    build_cohort(CohortSources(rna=str(tmp_path / "rna.tsv"), methylation=str(tmp_path / "meth.tsv")), out,
                 progress=False)
    return out


def test_train_preset_auto_resolves_from_the_cohort(tmp_path, capsys):
    from pathalign.train.cli import add_arguments, resolve_preset

    p = argparse.ArgumentParser()
    add_arguments(p)
    assert p.parse_args(["--cohort", "c", "--out", "o"]).preset == "auto"
    big, small = _molecular_cohort(tmp_path, 210), _molecular_cohort(tmp_path, 40)
    assert resolve_preset("auto", str(big), None) == "molecular"
    assert "--preset auto: molecular" in capsys.readouterr().out
    assert resolve_preset("auto", str(small), None) == "tiny"
    assert resolve_preset("auto", str(big), ["rna"]) == "tiny"  # one modality: nobody has two
    assert resolve_preset("small", str(big), None) == "small"


def test_benchmark_conversions_against_their_formulas():
    bench = _bench_module()
    rng = seeded_rng()
    m = pd.DataFrame(rng.normal(0, 2, (6, 4)))
    beta = bench.mvalue_to_beta(m).to_numpy()
    np.testing.assert_allclose(np.log2(beta / (1 - beta)), m.to_numpy(), rtol=1e-10)  # M = log2(beta / (1 - beta))
    rna = pd.DataFrame([[-0.5, 3.0], [2.0, -1.7]])
    clipped, n_neg = bench.clip_negative_log2(rna)
    assert n_neg == 2 and clipped.to_numpy().tolist() == [[0.0, 3.0], [2.0, 0.0]]


def test_benchmark_recall_at_k_matches_a_plain_loop():
    bench = _bench_module()
    rng = seeded_rng()
    a, b = rng.normal(size=(20, 3)), rng.normal(size=(20, 3))
    fwd, back = bench.recall_at_k(a, b, k=5)
    an, bn = a / np.linalg.norm(a, axis=1)[:, None], b / np.linalg.norm(b, axis=1)[:, None]

    def plain(x, y):
        hits = 0
        for i in range(len(x)):
            sims = [float(x[i] @ y[j]) for j in range(len(y))]
            order = sorted(range(len(y)), key=lambda j: -sims[j])
            hits += i in order[:5]
        return hits / len(x)

    assert fwd == pytest.approx(plain(an, bn)) and back == pytest.approx(plain(bn, an))
