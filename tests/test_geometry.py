"""Embedding geometry against independent references (scipy, the HSIC formula, definitions)."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg

from pathalign.geometry import (
    effective_rank,
    linear_cka,
    mean_pairwise_cosine,
    principal_angles,
    random_overlap_null,
    subspace_overlap,
)

SEEDS = [0, 1, 2, 3]


@pytest.mark.parametrize("seed", SEEDS)
def test_principal_angles_match_scipy(seed):
    rng = np.random.default_rng(seed)
    d, ka, kb = 12, int(rng.integers(1, 6)), int(rng.integers(1, 6))
    a, b = rng.standard_normal((d, ka)), rng.standard_normal((d, kb))
    ours = principal_angles(a, b)
    ref = np.sort(scipy.linalg.subspace_angles(a, b))
    np.testing.assert_allclose(ours, ref, atol=1e-10, err_msg=f"seed={seed}")


def test_principal_angles_of_nested_and_orthogonal_spaces():
    e = np.eye(6)
    np.testing.assert_allclose(principal_angles(e[:, :3], e[:, :2] @ np.array([[2.0, 1.0], [0.0, 3.0]])), 0, atol=1e-12)
    np.testing.assert_allclose(principal_angles(e[:, :2], e[:, 2:5]), np.pi / 2, atol=1e-12)
    assert subspace_overlap(e[:, :2], e[:, 2:5]) == pytest.approx(0.0, abs=1e-12)
    assert subspace_overlap(e[:, :3], e[:, :3] @ np.random.default_rng(0).standard_normal((3, 3))) == pytest.approx(1.0)


def _hsic(k, m):
    n = k.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n
    return np.trace(k @ h @ m @ h) / (n - 1) ** 2


@pytest.mark.parametrize("seed", SEEDS)
def test_linear_cka_matches_hsic_formula(seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((30, 7))
    y = x @ rng.standard_normal((7, 5)) + 0.5 * rng.standard_normal((30, 5))
    kx, ky = x @ x.T, y @ y.T
    ref = _hsic(kx, ky) / np.sqrt(_hsic(kx, kx) * _hsic(ky, ky))
    assert linear_cka(x, y) == pytest.approx(ref, rel=1e-10), f"seed={seed}"


def test_linear_cka_invariances():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((40, 6))
    q, _ = np.linalg.qr(rng.standard_normal((6, 6)))
    assert linear_cka(x, 3.0 * x @ q + 2.0) == pytest.approx(1.0)
    assert linear_cka(x, rng.standard_normal((40, 6))) < 0.5


@pytest.mark.parametrize("seed", SEEDS)
def test_effective_rank_matches_definition_via_eigenvalues(seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((25, 8)) * rng.uniform(0.1, 3.0, 8)
    xc = x - x.mean(0)
    s = np.sqrt(np.clip(np.linalg.eigvalsh(xc.T @ xc), 0, None))  # singular values via the covariance
    p = s[s > 1e-9] / s.sum()
    assert effective_rank(x) == pytest.approx(np.exp(-(p * np.log(p)).sum()), rel=1e-8), f"seed={seed}"


def test_effective_rank_limits():
    rng = np.random.default_rng(7)
    line = rng.standard_normal((20, 1)) @ rng.standard_normal((1, 9))
    assert effective_rank(line) == pytest.approx(1.0)
    assert effective_rank(np.tile(rng.standard_normal(9), (20, 1))) == 0.0  # constant rows: no spread
    q, _ = np.linalg.qr(rng.standard_normal((9, 9)))
    assert effective_rank(q[:4], center=False) == pytest.approx(4.0)  # 4 orthonormal rows: even spread


@pytest.mark.parametrize("seed", SEEDS)
def test_mean_pairwise_cosine_matches_loop(seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((9, 4)) + rng.uniform(-1, 1, 4)
    ref = np.mean([x[i] @ x[j] / np.linalg.norm(x[i]) / np.linalg.norm(x[j])
                   for i in range(9) for j in range(9) if i != j])
    assert mean_pairwise_cosine(x) == pytest.approx(ref, rel=1e-10), f"seed={seed}"
    assert mean_pairwise_cosine(np.tile(x[:1], (5, 1))) == pytest.approx(1.0)


def test_random_null_is_the_chance_level():
    null = random_overlap_null((64, 4), (64, 4), draws=300, seed=0)
    # two random 4-dim subspaces of R^64: E[cos^2] = 4/64 per angle on average
    assert null.mean() == pytest.approx(4 / 64, rel=0.25)


def test_errors_name_the_shapes():
    with pytest.raises(ValueError, match="different spaces"):
        principal_angles(np.ones((3, 1)), np.ones((4, 1)))
    with pytest.raises(ValueError, match="same samples"):
        linear_cka(np.ones((3, 2)), np.ones((4, 2)))
