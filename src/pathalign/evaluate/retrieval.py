"""Retrieval metrics: cross-modal recall@k (matched pairs on the diagonal) and label-based slide retrieval."""
from __future__ import annotations

from collections.abc import Collection, Sequence

import numpy as np

from ..io.embeddings import patient_ids, patient_means


def recall_at_k(similarity: np.ndarray, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Recall@k of queries (rows) whose match is the same-index column of ``similarity`` [n, n].

    Ties are broken against the query (a tied wrong item ranks first), so constant scores give chance or less.
    """
    s = np.asarray(similarity, dtype=np.float64)
    if s.ndim != 2 or s.shape[0] != s.shape[1] or s.shape[0] == 0:
        raise ValueError(f"similarity must be a non-empty square matrix, got {s.shape}")
    true = np.diag(s)[:, None]
    rank = (s >= true).sum(axis=1) - 1  # number of other items scoring at least as high
    return {f"recall@{k}": float(np.mean(rank < k)) for k in ks}


def chance_recall(n: int, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Expected recall@k of a random ranking over ``n`` candidates."""
    return {f"recall@{k}": min(1.0, k / n) for k in ks}


def label_retrieval(embeddings: np.ndarray, labels: np.ndarray, groups: np.ndarray | None = None,
                    ks: Sequence[int] = (1, 5), queries: np.ndarray | None = None) -> dict[str, float]:
    """Slide → slide retrieval by cosine similarity: top-k accuracy and mAP@5 by label.

    Items from the same ``groups`` entry (e.g. the same patient) are excluded from each other's results.
    ``queries`` (indices) restricts the queries to those items, every item staying a candidate.
    """
    hits = label_hits(embeddings, labels, groups, queries)
    return retrieval_scores(hits, ks)


def label_hits(embeddings: np.ndarray, labels: np.ndarray, groups: np.ndarray | None = None,
               queries: np.ndarray | None = None) -> np.ndarray:
    """Per query, whether each ranked candidate has its label: bool [n_queries, n - 1] (best first).

    Candidates of the query's own group are ranked last and never count as hits. Rows of several calls can
    be stacked (same ``n``) and scored together by :func:`retrieval_scores`.
    """
    x = np.asarray(embeddings, np.float64)
    x = x / np.clip(np.linalg.norm(x, axis=1, keepdims=True), 1e-12, None)
    labels = np.asarray(labels)
    groups = np.arange(len(x)) if groups is None else np.asarray(groups)
    q = np.arange(len(x)) if queries is None else np.asarray(queries, int)
    sim = x[q] @ x.T  # [n_queries, n]
    sim[groups[q][:, None] == groups[None, :]] = -np.inf
    order = np.argsort(-sim, axis=1, kind="stable")
    hits = labels[order] == labels[q][:, None]  # [n_queries, n]
    hits &= np.isfinite(np.take_along_axis(sim, order, axis=1))
    return hits


def retrieval_scores(hits: np.ndarray, ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """Top-k accuracy and mAP@5 of the rows of :func:`label_hits`."""
    out = {f"top{k}_acc": float(hits[:, :k].any(axis=1).mean()) for k in ks}
    k = min(5, hits.shape[1])
    prec = np.cumsum(hits[:, :k], axis=1) / np.arange(1, k + 1)
    n_rel = np.minimum(hits.sum(axis=1), k)
    ap = (prec * hits[:, :k]).sum(axis=1) / np.clip(n_rel, 1, None)
    out["mAP@5"] = float(ap.mean())
    return out


def patient_pair_space(emb: dict, a: str, b: str,
                       patients: Collection[str] | None = None) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Per-patient vectors of modalities ``a`` and ``b`` in their pair space, for the patients having both.

    ``emb`` is what :func:`pathalign.io.embeddings.read_embeddings` returns. Slides of one patient are averaged
    (then re-normalised). Returns ``(patient ids, [n, P] a-side, [n, P] b-side)``.
    """
    key, flip = (f"{a}-{b}", False) if f"{a}-{b}" in emb.get("pairs", {}) else (f"{b}-{a}", True)
    if key not in emb.get("pairs", {}):
        raise KeyError(f"no pair {a}-{b} in the embeddings (pairs: {sorted(emb.get('pairs', {}))})")
    pair = emb["pairs"][key]

    def per_patient(m: str) -> dict[str, np.ndarray]:
        return {p: v / max(np.linalg.norm(v), 1e-12) for p, v in patient_means(patient_ids(emb, m), pair[m]).items()}

    va, vb = per_patient(a), per_patient(b)
    common = [p for p in va if p in vb and (patients is None or p in patients)]
    return common, np.array([va[p] for p in common]), np.array([vb[p] for p in common])


def cross_modal_retrieval(emb: dict, a: str, b: str, patients: Collection[str] | None = None,
                          ks: Sequence[int] = (1, 5, 10)) -> dict:
    """Recall@k of ``a`` → ``b`` retrieval through the pair adapters, with chance and the number of patients."""
    ids, xa, xb = patient_pair_space(emb, a, b, patients)
    if len(ids) < 2:
        raise ValueError(f"{a}-{b}: {len(ids)} patients have both modalities; retrieval needs at least 2")
    out = recall_at_k(xa @ xb.T, ks)
    out.update({f"chance@{k}": v for k, v in ((int(k.split("@")[1]), v) for k, v in chance_recall(len(ids), ks).items())})
    out["n"] = len(ids)
    return out
