"""Collapse/dominance rules and per-pair gradient norms against a plain per-pair backward."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pathalign.train.diagnostics import (
    COLLAPSE_RANK,
    dominance_threshold,
    modality_health,
    pair_gradient_norms,
    shares,
    warnings_for,
)


def test_constant_encoder_is_flagged_and_healthy_one_is_not():
    rng = np.random.default_rng(0)
    healthy = rng.standard_normal((64, 32))
    constant = np.tile(rng.standard_normal(32), (64, 1)) + 1e-6 * rng.standard_normal((64, 32))
    health = modality_health({"rna": healthy, "snp": constant})
    assert health["rna"].effective_rank > 10 and not health["rna"].collapsed
    assert health["snp"].collapsed and health["snp"].mean_cosine > 0.99
    msgs = warnings_for(health, {})
    assert len(msgs) == 1 and "'snp'" in msgs[0]


def test_one_direction_is_collapse_even_when_cosines_spread():
    rng = np.random.default_rng(1)
    line = rng.standard_normal((50, 1)) @ rng.standard_normal((1, 16))  # +/- one direction: cosines +-1
    h = modality_health({"cnv": line})["cnv"]
    assert h.effective_rank < COLLAPSE_RANK and h.collapsed


def test_dominance_rule():
    # 3x the median of the others; with the others even: s > 3 (1 - s) / (P - 1)  <=>  s > 3 / (P + 2)
    assert dominance_threshold(10) == pytest.approx(3 / 12) and dominance_threshold(3) == pytest.approx(0.6)
    assert dominance_threshold(1) == 1.0
    s = shares({"wsi-rna": 8.0, "wsi-snp": 1.0, "rna-snp": 1.0, "wsi-cnv": float("nan")})
    assert s["wsi-rna"] == pytest.approx(0.8) and np.isnan(s["wsi-cnv"])
    msgs = warnings_for({}, {**s, **{f"p{i}": 0.0 for i in range(3)}})  # 7 pairs: 0.8 vs a median of 0
    assert len(msgs) == 1 and "wsi-rna dominates" in msgs[0]
    assert warnings_for({}, shares({"a-b": 1.0, "a-c": 1.1, "b-c": 0.9})) == []


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pair_gradient_norms_equal_separate_backward_passes(seed):
    torch.manual_seed(seed)
    enc = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 3))
    head = torch.nn.Linear(3, 3)  # not a shared encoder: excluded from the norm
    x = torch.randn(6, 5)
    z = enc(x)
    losses = {"a-b": z.pow(2).mean(), "a-c": head(z).sin().sum(), "b-c": x.sum() * 0 + head.weight.sum()}
    ours = pair_gradient_norms(losses, list(enc.parameters()))
    for name, fn in {"a-b": lambda z: z.pow(2).mean(), "a-c": lambda z: head(z).sin().sum()}.items():
        enc.zero_grad()
        fn(enc(x)).backward()
        ref = torch.sqrt(sum(p.grad.double().pow(2).sum() for p in enc.parameters()))
        assert ours[name] == pytest.approx(float(ref), rel=1e-9), f"seed={seed} pair={name}"
    assert ours["b-c"] == 0.0  # reaches no encoder parameter


def _model_and_batch(seed: int, modalities=("rna", "snp", "cnv", "methylation"), n: int = 32):
    from pathalign.models.pathalign_model import PathAlignConfig, PathAlignModel

    torch.manual_seed(seed)
    dims = {m: 12 + 3 * i for i, m in enumerate(modalities)}
    model = PathAlignModel(PathAlignConfig(modalities=list(modalities), input_dims=dims, embed_dim=16, proj_dim=8))
    g = torch.Generator().manual_seed(seed)
    batch = {"valid": {m: torch.ones(n, dtype=torch.bool) for m in modalities},
             **{m: torch.randn(n, d, generator=g) for m, d in dims.items()}}
    batch["valid"]["methylation"][: n // 4] = False  # missing for some patients
    return model, batch


@pytest.mark.parametrize("seed", [0, 1])
def test_diagnose_is_quiet_on_a_healthy_model_and_fires_on_a_constant_encoder(seed):
    from pathalign.train.diagnostics import diagnose

    model, batch = _model_and_batch(seed)
    healthy = diagnose(model, batch)
    assert healthy["warnings"] == [], f"seed={seed}: {healthy['warnings']}"
    assert healthy["health"]["methylation"].n == 24  # only the patients who have it
    assert sum(healthy["grad_share"].values()) == pytest.approx(1.0)
    assert model.training  # mode restored
    with torch.no_grad():
        model.encoders["snp"].proj.weight.zero_()  # snp now maps every patient to one vector
    collapsed = diagnose(model, batch)
    assert any("'snp' is collapsing" in w for w in collapsed["warnings"]), f"seed={seed}"
    assert not any("'rna'" in w for w in collapsed["warnings"])


def test_diagnose_names_a_dominating_pair():
    from pathalign.train.diagnostics import diagnose

    model, batch = _model_and_batch(3)
    with torch.no_grad():
        for name, adapter in model.pair_heads.adapters.items():
            if name not in ("rna->cnv", "cnv->rna"):
                adapter.weight.zero_()  # every other pair sees constant logits: no gradient reaches the encoders
    result = diagnose(model, batch)
    assert result["grad_share"]["rna-cnv"] == pytest.approx(1.0)
    assert any(w.startswith("pair rna-cnv dominates") for w in result["warnings"])
