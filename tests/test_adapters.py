"""Adapter analysis on planted adapters and embeddings (the truth is known by construction)."""
from __future__ import annotations

import numpy as np
import pytest

from pathalign.evaluate.adapters import same_source_overlaps, same_target_cka, top_features


@pytest.mark.parametrize("seed", [0, 1])
def test_same_source_overlap_finds_a_shared_subspace_and_not_a_random_one(seed):
    rng = np.random.default_rng(seed)
    d, p = 48, 4
    basis = rng.standard_normal((p, d))
    adapters = {("rna", "wsi"): rng.standard_normal((p, p)) @ basis,  # same rows, mixed
                ("rna", "snp"): rng.standard_normal((p, p)) @ basis + 0.01 * rng.standard_normal((p, d)),
                ("rna", "cnv"): rng.standard_normal((p, d))}
    rows = {tuple(r["targets"]): r for r in same_source_overlaps(adapters, k=p, draws=100, seed=seed)}
    shared = rows[("snp", "wsi")]
    assert shared["overlap"] > 0.99 and shared["above_null"], f"seed={seed}"
    assert max(shared["angles_deg"]) < 5
    for key in (("cnv", "snp"), ("cnv", "wsi")):
        assert not rows[key]["above_null"], f"seed={seed} {key}"
        assert rows[key]["null"]["mean"] == pytest.approx(p / d, rel=0.35)


@pytest.mark.parametrize("seed", [0, 1])
def test_same_target_cka_is_high_for_a_shared_signal_and_null_when_patients_are_shuffled(seed):
    rng = np.random.default_rng(seed)
    n, p = 80, 6
    pids = [f"P{i}" for i in range(n)]
    shared = rng.standard_normal((n, 3))
    z = {m: np.concatenate([shared @ rng.standard_normal((3, 8)), rng.standard_normal((n, 8))], 1) for m in ("rna", "snp")}
    target = shared @ rng.standard_normal((3, p))  # what both align with in the space they share with WSI
    w = {m: np.linalg.lstsq(z[m], target, rcond=None)[0].T for m in ("rna", "snp")}  # [p, d]: as training would fit
    raw = {m: dict(zip(pids, z[m])) for m in z}
    proj = {(m, "wsi"): dict(zip(pids, z[m] @ w[m].T)) for m in z}
    adapters = {(m, "wsi"): w[m] for m in z}
    row = same_target_cka(proj, raw, adapters, draws=30, seed=seed)[0]
    assert row["sources"] == ["rna", "snp"] and row["n"] == n
    assert row["cka"] > 0.6 and row["above_null"], f"seed={seed} {row}"
    perm = rng.permutation(n)
    shuffled = {("rna", "wsi"): proj[("rna", "wsi")],
                ("snp", "wsi"): {pids[i]: proj[("snp", "wsi")][pids[j]] for i, j in enumerate(perm)}}
    raw_sh = {"rna": raw["rna"], "snp": {pids[i]: raw["snp"][pids[j]] for i, j in enumerate(perm)}}
    row = same_target_cka(shuffled, raw_sh, adapters, draws=30, seed=seed)[0]
    assert not row["above_null"] and row["cka"] < 0.3, f"seed={seed} {row}"


def test_too_few_shared_patients_is_reported_not_scored():
    proj = {("rna", "wsi"): {"a": np.ones(2)}, ("snp", "wsi"): {"a": np.ones(2)}}
    row = same_target_cka(proj, {"rna": {"a": np.ones(3)}, "snp": {"a": np.ones(3)}},
                          {("rna", "wsi"): np.ones((2, 3)), ("snp", "wsi"): np.ones((2, 3))})[0]
    assert row["skipped"] == "too few patients" and "cka" not in row


def test_top_features_order():
    out = top_features(np.array([0.1, 0.5, 0.5, 0.0]), ["g1", "g3", "g2", "g4"], k=3)
    assert [r["feature"] for r in out] == ["g2", "g3", "g1"]
