"""Projection-adapter analysis: what does each pair's adapter W_ij keep of modality i?

The method's "first experiment 3": RNA→WSI and SNP→WSI projections should differ, and the
pair-specific spaces should capture biologically meaningful relationships. Three views, each
against a null of random matrices of the same shape:

* **Same source** (W_ij vs W_ik, both read z_i): principal angles between the k input directions
  each adapter amplifies most (top right singular vectors), i.e. whether modality i shows the
  same directions to j and to k. Summarised as the subspace overlap (mean squared cosine of the
  principal angles; 1 = the same subspace, chance about k / d_i).
* **Same target** (W_ij vs W_kj, both land in a space shared with j): linear CKA of the projected
  embeddings W_ij z_i and W_kj z_k over the patients having i and k — whether two modalities
  agree, patient by patient, about what they align with j.
* **Attribution**: which input features (genes, mutated genes, CNV regions, CpG probes) drive the
  alignment of i with j: gradient × input of the cosine between l2norm(W_ij E_i(x_i)) and the
  patient's own partner l2norm(W_ji z_j), through the modality encoder E_i, mean |.| over patients.
"""
from __future__ import annotations

import itertools

import numpy as np

from ..geometry import linear_cka, principal_angles, subspace_overlap


def _null_summary(values: np.ndarray) -> dict[str, float]:
    return {"mean": float(np.mean(values)), "q95": float(np.quantile(values, 0.95))}


def top_row_space(w: np.ndarray, k: int) -> np.ndarray:
    """Orthonormal basis ``[d, k]`` of the ``k`` input directions ``w`` [P, d] amplifies most (top right singular vectors)."""
    _, _, vt = np.linalg.svd(np.asarray(w, dtype=np.float64), full_matrices=False)
    return vt[:k].T


def same_source_overlaps(adapters: dict[tuple[str, str], np.ndarray], k: int = 8, draws: int = 200,
                         seed: int = 0) -> list[dict]:
    """Overlap of the dominant input subspaces of every two adapters that read the same modality, with a null.

    An adapter with ``P >= d`` rows spans all of ``z``; what tells two adapters apart is which
    directions each amplifies most, so each is summarised by its top ``k`` right singular vectors.

    Args:
        adapters: ``{(source, target): W [P, d_source]}``.
        k: dominant directions compared per adapter (capped by the adapter's shape).
        draws: random matrix pairs (same shapes) in the null.
    Returns:
        One dict per (source, target a, target b): ``k``, ``overlap``, ``angles_deg``, ``null`` (mean, q95),
        ``above_null`` (overlap above the null's 95th percentile).
    """
    rng = np.random.default_rng(seed)
    rows = []
    sources = sorted({s for s, _ in adapters})
    for s in sources:
        targets = sorted(t for (src, t) in adapters if src == s)
        for a, b in itertools.combinations(targets, 2):
            wa, wb = adapters[(s, a)], adapters[(s, b)]
            kk = max(1, min(k, wa.shape[0], wb.shape[0], wa.shape[1] - 1))  # k < d, or every pair would overlap fully
            qa, qb = top_row_space(wa, kk), top_row_space(wb, kk)
            ov = subspace_overlap(qa, qb)
            null = np.array([subspace_overlap(top_row_space(rng.standard_normal(wa.shape), kk),
                                              top_row_space(rng.standard_normal(wb.shape), kk)) for _ in range(draws)])
            rows.append({"source": s, "targets": [a, b], "k": kk, "overlap": ov,
                         "angles_deg": np.degrees(principal_angles(qa, qb)).round(2).tolist(),
                         "null": _null_summary(null), "above_null": bool(ov > np.quantile(null, 0.95))})
    return rows


def same_target_cka(projected: dict[tuple[str, str], dict[str, np.ndarray]],
                    raw: dict[str, dict[str, np.ndarray]], adapters: dict[tuple[str, str], np.ndarray],
                    draws: int = 50, seed: int = 0, min_patients: int = 8) -> list[dict]:
    """Linear CKA of W_ij z_i and W_kj z_k over shared patients, for every two sources of one target.

    Args:
        projected: ``{(source, target): {patient: W_st z_s}}``.
        raw: ``{modality: {patient: z}}`` (the null projects these with random matrices).
        adapters: ``{(source, target): W}`` (only their shapes are used by the null).
        draws: random projections in the null.
    Returns:
        One dict per (target, source a, source b): ``cka``, ``n``, ``null`` (mean, q95), ``above_null``.
    """
    rng = np.random.default_rng(seed)
    rows = []
    targets = sorted({t for _, t in projected})
    for t in targets:
        sources = sorted(s for (s, tt) in projected if tt == t)
        for a, b in itertools.combinations(sources, 2):
            pa, pb = projected[(a, t)], projected[(b, t)]
            common = sorted(set(pa) & set(pb))
            if len(common) < min_patients:
                rows.append({"target": t, "sources": [a, b], "n": len(common), "skipped": "too few patients"})
                continue
            xa = np.stack([pa[p] for p in common])
            xb = np.stack([pb[p] for p in common])
            za = np.stack([raw[a][p] for p in common])
            zb = np.stack([raw[b][p] for p in common])
            null = np.array([linear_cka(za @ rng.standard_normal(adapters[(a, t)].T.shape),
                                        zb @ rng.standard_normal(adapters[(b, t)].T.shape)) for _ in range(draws)])
            cka = linear_cka(xa, xb)
            rows.append({"target": t, "sources": [a, b], "n": len(common), "cka": cka,
                         "null": _null_summary(null), "above_null": bool(cka > np.quantile(null, 0.95))})
    return rows


def top_features(attribution: np.ndarray, names: list[str], k: int = 20) -> list[dict]:
    """The ``k`` features with the largest mean |gradient × input| (ties by name)."""
    order = sorted(range(len(names)), key=lambda i: (-float(attribution[i]), names[i]))[:k]
    return [{"feature": names[i], "score": float(attribution[i])} for i in order]
