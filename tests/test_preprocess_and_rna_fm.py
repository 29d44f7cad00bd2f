"""Training-time preprocessing, molecular encoders and the RNA foundation model."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from pathalign.cohort import CohortInputError, load_cohort
from pathalign.models.molecular import FrozenFMEncoder, MLPEncoder
from pathalign.models.preprocessing import TRANSFORMS, make_transform
from pathalign.models.rna_fm import RNAFoundationModel
from pathalign.train.rna_pretrain import pretrain_rna


def test_rna_transform_fitted_on_training_patients_only():
    rng = np.random.default_rng(0)
    tpm = pd.DataFrame(rng.gamma(2, 50, (10, 6)), index=[f"P{i}" for i in range(10)], columns=list("ABCDEF"))
    tpm["F"] = 7.0  # no variance: never among the top genes
    tr = make_transform("rna", {"units": {"rna": "tpm"}}, n_genes=3).fit(tpm.iloc[:6])
    logv = np.log2(tpm.iloc[:6] + 1)
    top = sorted(logv.var(ddof=0).sort_values(ascending=False).index[:3])
    assert tr.features == top
    out = tr.transform(tpm.iloc[6:])
    expected = (np.log2(tpm.iloc[6:][top] + 1) - logv[top].mean()) / logv[top].std(ddof=0)
    np.testing.assert_allclose(out, expected.to_numpy(), rtol=1e-5)
    again = TRANSFORMS.get("rna").from_state_dict(json.loads(json.dumps(tr.state_dict())))
    np.testing.assert_array_equal(again.transform(tpm.iloc[6:]), out)


def test_rna_units_conversions_agree():
    rng = np.random.default_rng(1)
    counts = pd.DataFrame(rng.poisson(100, (4, 5)).astype(float), columns=list("ABCDE"))
    lengths = dict(zip("ABCDE", [1000.0, 2000.0, 500.0, 4000.0, 1500.0]))
    rate = counts / (np.array(list(lengths.values())) / 1e3)
    tpm = rate.div(rate.sum(axis=1), axis=0) * 1e6
    a = make_transform("rna", {}, units="counts", gene_lengths=lengths, n_genes=5).fit(counts)
    b = make_transform("rna", {}, units="tpm", n_genes=5).fit(tpm)
    c = make_transform("rna", {}, units="log2tpm", n_genes=5).fit(np.log2(tpm + 1))
    np.testing.assert_allclose(a.transform(counts), b.transform(tpm), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(c.transform(np.log2(tpm + 1)), b.transform(tpm), rtol=1e-5, atol=1e-6)


def test_methylation_nan_is_imputed_and_flagged_never_silent_zero():
    beta = pd.DataFrame({"cg1": [0.2, 0.4, np.nan, 0.6], "cg2": [0.9, 0.8, 0.7, 0.6], "cg3": [0.5] * 4})
    tr = make_transform("methylation", {}, max_probes=2).fit(beta.iloc[:3])
    assert tr.features == ["cg1", "cg2"] and tr.na_features == ["cg1"]
    out = tr.transform(beta)
    assert out.shape == (4, 3)
    assert out[2, 0] == pytest.approx(0.0)  # training mean, standardised
    assert out[:, 2].tolist() == [0, 0, 1, 0]  # the indicator says it was missing
    new = pd.DataFrame({"cg1": [0.3], "cg2": [np.nan]})  # missing where training had none: imputed and counted
    tr.transform(new)
    assert tr.last_imputed == 1


def test_snp_and_cnv_transforms():
    snp = pd.DataFrame({"TP53": [1, 0, 1, 1], "KRAS": [0, 0, 0, 1], "RARE": [0, 0, 0, 0]}, dtype=float)
    tr = make_transform("snp", {}, min_freq=0.2).fit(snp)
    assert tr.features == ["TP53", "KRAS"]  # matrix column order is kept
    np.testing.assert_array_equal(tr.transform(snp), snp[["TP53", "KRAS"]].to_numpy())
    with pytest.raises(CohortInputError, match="no gene is mutated"):
        make_transform("snp", {}, min_freq=0.9).fit(snp)
    cnv = pd.DataFrame({"A": [-3.0, 2.0, 0.0], "B": [1.0, 1.0, 1.0]})
    tr = make_transform("cnv", {"units": {"cnv": "gistic"}}, max_genes=1).fit(cnv)
    assert tr.features == ["A"]
    clipped = np.array([-2.0, 2.0, 0.0])
    np.testing.assert_allclose(tr.transform(cnv)[:, 0], (clipped - clipped.mean()) / clipped.std(), rtol=1e-6)


def test_mlp_encoder_shapes_and_gradients():
    enc = MLPEncoder(30, 16, depth=2, dropout=0.0)
    x = torch.randn(5, 30, requires_grad=True)
    y = enc(x)
    assert y.shape == (5, 16)
    y.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_pretrain_rna_beats_mean_imputation(small_cohort, tmp_path):
    metrics = pretrain_rna(small_cohort, tmp_path / "fm", n_genes=200, dim=32, depth=1, steps=400, seed=0,
                           holdout=0.2, progress=False)
    assert metrics["heldout_masked_mse"] < 0.65 * metrics["mean_imputation_mse"], metrics
    fm, prep = RNAFoundationModel.load(tmp_path / "fm")
    assert prep["kind"] == "rna" and len(prep["features"]) == fm.config.n_genes
    enc = FrozenFMEncoder(fm, dim=16).train()
    rna = load_cohort(small_cohort).matrix("rna")
    x = torch.from_numpy(TRANSFORMS.get("rna").from_state_dict(prep).transform(rna))
    out = enc(x)
    out.sum().backward()
    assert out.shape == (len(rna), 16)
    assert all(p.grad is None for p in enc.foundation.parameters())  # frozen
    assert all(p.grad is not None for p in enc.head.parameters() if p.requires_grad)
    assert not enc.foundation.training
