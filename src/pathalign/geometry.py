"""Geometry of embeddings and linear maps: effective rank, pairwise cosine, principal angles, CKA.

Pure NumPy functions used by the collapse diagnostics (training) and the projection-adapter
analysis (``pathalign analyze adapters``). Each has a reference it is tested against:
principal angles against :func:`scipy.linalg.subspace_angles`, linear CKA against the
HSIC formula of Kornblith et al. (2019), effective rank against its definition
(Roy & Vetterli, 2007).
"""
from __future__ import annotations

import numpy as np

_EPS = 1e-12


def effective_rank(x: np.ndarray, center: bool = True) -> float:
    """Effective rank of the rows of ``x`` [n, d] (Roy & Vetterli 2007).

    ``exp(H(p))`` with ``p_k = s_k / sum(s)`` over the singular values ``s`` of ``x`` (after
    subtracting the column means when ``center``). It runs from 1 (every row on one line) to
    ``min(n, d)`` (variance spread evenly over every direction); an embedding whose rows do
    not vary at all has effective rank 0.

    Args:
        x: embeddings, one row per sample.
        center: subtract the mean row first (measures spread, not offset).
    Returns:
        The effective rank, a float.
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"effective_rank needs a non-empty [n, d] matrix, got shape {x.shape}")
    if center:
        x = x - x.mean(axis=0, keepdims=True)
    s = np.linalg.svd(x, compute_uv=False)
    total = s.sum()
    if total <= _EPS * max(1.0, np.abs(x).max(initial=0.0)) * max(x.shape):
        return 0.0
    p = s[s > 0] / total
    return float(np.exp(-(p * np.log(p)).sum()))


def mean_pairwise_cosine(x: np.ndarray) -> float:
    """Mean cosine similarity over all pairs of distinct rows of ``x`` [n, d] (1 = all rows parallel)."""
    x = np.asarray(x, dtype=np.float64)
    n = x.shape[0]
    if n < 2:
        raise ValueError(f"mean_pairwise_cosine needs at least 2 rows, got {n}")
    u = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), _EPS)
    total = u.sum(axis=0)
    # sum over i != j of u_i.u_j = |sum u|^2 - sum |u_i|^2
    off = total @ total - (u * u).sum()
    return float(off / (n * (n - 1)))


def orthonormal_basis(a: np.ndarray, tol: float = 1e-10) -> np.ndarray:
    """Orthonormal basis [d, r] of the column space of ``a`` [d, k] (rank ``r`` by SVD)."""
    a = np.asarray(a, dtype=np.float64)
    u, s, _ = np.linalg.svd(a, full_matrices=False)
    if s.size == 0:
        return u[:, :0]
    r = int((s > tol * s[0]).sum())
    return u[:, :r]


def principal_angles(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Principal angles (radians, ascending) between the column spaces of ``a`` [d, k] and ``b`` [d, l].

    Args:
        a, b: matrices with the same number of rows.
    Returns:
        ``min(rank a, rank b)`` angles in [0, pi/2], smallest first.
    """
    if np.shape(a)[0] != np.shape(b)[0]:
        raise ValueError(f"subspaces live in different spaces: {np.shape(a)[0]} vs {np.shape(b)[0]} rows")
    qa, qb = orthonormal_basis(a), orthonormal_basis(b)
    if qa.shape[1] < qb.shape[1]:
        qa, qb = qb, qa
    cos = np.linalg.svd(qa.T @ qb, compute_uv=False)  # descending cosines, min(r_a, r_b) of them
    angles = np.arccos(np.clip(cos, -1.0, 1.0))
    # arccos loses precision near 0: take small angles from the sines instead (Knyazev & Argentati 2002)
    small = cos ** 2 >= 0.5
    if small.any():
        resid = qb - qa @ (qa.T @ qb)  # the part of span(b) outside span(a)
        sin = np.sort(np.linalg.svd(resid, compute_uv=False))[: cos.size]  # ascending sines
        angles[small] = np.arcsin(np.clip(sin[: int(small.sum())], 0.0, 1.0))
    return np.sort(angles)


def subspace_overlap(a: np.ndarray, b: np.ndarray) -> float:
    """Mean squared cosine of the principal angles between the column spaces (0 = orthogonal, 1 = nested)."""
    angles = principal_angles(a, b)
    return float(np.mean(np.cos(angles) ** 2)) if angles.size else 0.0


def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear centred kernel alignment of two representations of the same samples (Kornblith et al. 2019).

    ``||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F)`` with column-centred ``Xc`` [n, p], ``Yc`` [n, q];
    invariant to rotations and isotropic scaling of either side, 1 for identical geometry.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"CKA compares representations of the same samples: {x.shape[0]} vs {y.shape[0]} rows")
    x = x - x.mean(axis=0)
    y = y - y.mean(axis=0)
    num = np.linalg.norm(y.T @ x) ** 2
    den = np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)
    return float(num / den) if den > _EPS else 0.0


def random_overlap_null(shape_a: tuple[int, int], shape_b: tuple[int, int], draws: int = 200,
                        seed: int = 0) -> np.ndarray:
    """Subspace overlaps of pairs of Gaussian random matrices of the given shapes (the chance level)."""
    rng = np.random.default_rng(seed)
    return np.array([subspace_overlap(rng.standard_normal(shape_a), rng.standard_normal(shape_b))
                     for _ in range(draws)])
