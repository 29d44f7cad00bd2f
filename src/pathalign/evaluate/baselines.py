"""Baselines scored in the same benchmark run as the model, on the same tasks, folds and patients.

* ``raw:<modality>``: the cohort's matrix of the modality through the model's own preprocessing
  (:mod:`pathalign.models.preprocessing`: RNA log2(TPM+1) and top-variance genes, binary mutations of
  frequently mutated genes, clipped copy number, methylation probes, every one standardised and with
  missing-value indicators), fitted in each fold on the training patients only. Its options (number of
  genes, probes, units) are those of the model's recorded preprocessing when the embeddings name a
  model (folder or Hub id, read through :mod:`pathalign.io.model_folder`) whose ``config.json`` can be
  read and records them, else the transforms' defaults (what ``train`` uses), and the report says which.
* ``pca:<modality>``: those features reduced by PCA to :data:`PCA_COMPONENTS` components (fewer when
  the training fold has fewer patients or the modality fewer features), fitted on the training fold.
* ``cca:<a>-<b>``: for every cross-modal pair the model's retrieval scores, scikit-learn's ``CCA``
  fitted on the training patients (those of the cohort with both modalities that the model did not
  hold out) on the ``pca`` features of each side (preprocessing and PCA fitted on the same patients;
  CCA on thousands of raw features and a few hundred patients would fit the noise), then recall@k of
  ``a`` → ``b`` by cosine similarity of the canonical variates on the model's held-out patients, the
  very patients of the model's figure (at least 2 components: the cosine of 1-D variates is only their
  sign). The number of components is chosen among :data:`CCA_GRID` by
  recall@5 on a seeded fifth of the training patients (:data:`CCA_VALIDATION`), then CCA is refitted on
  all of them; the test patients are never looked at. ``cca_components`` fixes it instead.
"""
from __future__ import annotations

import warnings
from collections.abc import Collection, Sequence
from pathlib import Path

import numpy as np

from ..io.cohort_folder import Cohort
from ..models.preprocessing import make_transform
from .representations import Representation
from .retrieval import chance_recall, recall_at_k

PCA_COMPONENTS = 32
CCA_GRID = (2, 4, 8, 16, 32)
CCA_VALIDATION = 0.2
FITTED_FIELDS = frozenset({"features", "fill", "center", "scale", "na_features", "kind"})


def model_transform_options(model_path: str | Path | None) -> tuple[dict[str, dict], str]:
    """Per-modality transform options recorded in a model's ``config.json`` (its ``preprocessing``
    section, fitted values removed), and where they came from.

    Args:
        model_path: the model folder or Hub id the embeddings name (read through
            :mod:`pathalign.io.model_folder`, old folder layouts converted), or None.

    Returns:
        ``(options, source)``; ``({}, "transform defaults ...")`` when the model cannot be read or
        records no preprocessing options.
    """
    from ..io.model_folder import ConfigError
    from ..models.pathalign_model import read_model_config

    if not model_path:
        return {}, "transform defaults (the embeddings name no model)"
    try:
        folder, cfg = read_model_config(str(model_path))
    except ConfigError as e:
        return {}, f"transform defaults (the model's config is not readable: {e})"
    path = folder / "config.json"
    pre = cfg.get("preprocessing") or {}
    out = {m: {k: v for k, v in state.items() if k not in FITTED_FIELDS}
           for m, state in pre.items() if isinstance(state, dict) and state.get("kind") == m}
    if not out:
        return {}, f"transform defaults ({path} records no preprocessing options)"
    return out, f"the model's preprocessing options ({path})"


def _preprocess(cohort: Cohort, modality: str, options: dict, train: Sequence[str]):
    """The model's transform of ``modality`` fitted on the training patients having it; ``(transform, matrix)``."""
    mat = cohort.matrix(modality)
    fit_rows = [p for p in dict.fromkeys(train) if p in mat.index]
    tr = make_transform(modality, cohort.meta, **dict(options.get(modality, {}))).fit(mat.loc[fit_rows])
    return tr, mat, fit_rows


def raw_features(cohort: Cohort, modality: str, options: dict, ids: Sequence[str], train: Sequence[str]) -> np.ndarray:
    """``float [len(ids), F]``: the preprocessed matrix of ``ids``, the transform fitted on ``train`` only."""
    tr, mat, _ = _preprocess(cohort, modality, options, train)
    return tr.transform(mat.loc[list(ids)]).astype(np.float64)


def pca_features(cohort: Cohort, modality: str, options: dict, ids: Sequence[str], train: Sequence[str],
                 n_components: int = PCA_COMPONENTS) -> np.ndarray:
    """``float [len(ids), k]``: :func:`raw_features` then PCA, both fitted on ``train`` only."""
    from sklearn.decomposition import PCA

    tr, mat, fit_rows = _preprocess(cohort, modality, options, train)
    x_fit = tr.transform(mat.loc[fit_rows]).astype(np.float64)
    k = max(1, min(n_components, len(fit_rows) - 1, x_fit.shape[1]))
    pca = PCA(n_components=k, random_state=0).fit(x_fit)
    return pca.transform(tr.transform(mat.loc[list(ids)]).astype(np.float64))


def cohort_representations(cohort: Cohort, modalities: Sequence[str], options: dict,
                           pca_components: int = PCA_COMPONENTS) -> list[Representation]:
    """``raw:<m>`` and ``pca:<m>`` for every molecular modality of ``modalities`` the cohort has.

    Args:
        cohort: the cohort (:func:`pathalign.cohort.load_cohort`).
        modalities: modalities wanted (others, and ``wsi``/``fused``, are left out).
        options: per-modality transform options (:func:`model_transform_options`).
        pca_components: PCA components (capped by the training patients and features).

    Returns:
        The representations, raw then PCA per modality.
    """
    out = []
    for m in modalities:
        if m not in cohort.modalities or m == "wsi":
            continue
        patients = [str(p) for p in cohort.matrix(m).index]
        out.append(Representation(f"raw:{m}", "raw", m, patients,
                                  lambda ids, train, m=m: raw_features(cohort, m, options, ids, train),
                                  f"the cohort's {m} matrix, the model's preprocessing fitted on the training fold"))
        out.append(Representation(f"pca:{m}", "pca", m, patients,
                                  lambda ids, train, m=m: pca_features(cohort, m, options, ids, train, pca_components),
                                  f"raw:{m} reduced to {pca_components} principal components (fewer if the "
                                  "training fold is smaller), fitted on the training fold"))
    return out


def _cca_similarity(xa_tr, xb_tr, xa_te, xb_te, k: int) -> np.ndarray:
    """Cosine similarity [n_te, n_te] of the canonical variates of a CCA with ``k`` components fitted on the train part."""
    from sklearn.cross_decomposition import CCA

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cca = CCA(n_components=k).fit(xa_tr, xb_tr)
        ua, ub = cca.transform(xa_te, xb_te)
    ua = ua / np.clip(np.linalg.norm(ua, axis=1, keepdims=True), 1e-12, None)
    ub = ub / np.clip(np.linalg.norm(ub, axis=1, keepdims=True), 1e-12, None)
    return ua @ ub.T


def cca_retrieval(cohort: Cohort, a: str, b: str, test: Collection[str], options: dict, cca_components: int | None = None,
                  pca_components: int = PCA_COMPONENTS, seed: int = 0, ks: Sequence[int] = (1, 5, 10)) -> dict:
    """Recall@k of ``a`` → ``b`` through a CCA fitted on the cohort's other patients, on ``test`` (see module doc).

    Args:
        cohort: the cohort.
        a, b: molecular modalities.
        test: the held-out patients (those the model's figure is computed on, in its order).
        options: per-modality transform options.
        cca_components: components (None: chosen on a validation fifth of the training patients).
        pca_components: PCA components of each side before the CCA.
        seed: seed of the validation draw.
        ks: recall cut-offs.

    Returns:
        ``recall@k``, ``chance@k``, ``n`` (test patients), ``n_train``, ``n_components``, ``pca_components``
        and, when chosen, ``selection`` (validation recall@5 per component count).

    Raises:
        ValueError: fewer than 2 test patients or 3 training patients with both modalities.
    """
    both = set(map(str, cohort.matrix(a).index)) & set(map(str, cohort.matrix(b).index))
    test = [p for p in dict.fromkeys(map(str, test)) if p in both]
    held = set(test)
    train = [p for p in map(str, cohort.manifest.case_id) if p in both and p not in held]
    if len(test) < 2 or len(train) < 3:
        raise ValueError(f"CCA {a}-{b}: {len(test)} held-out and {len(train)} training patients have both "
                         "modalities (needs 2 and 3)")
    xa = pca_features(cohort, a, options, train + test, train, pca_components)
    xb = pca_features(cohort, b, options, train + test, train, pca_components)
    n = len(train)
    xa_tr, xb_tr, xa_te, xb_te = xa[:n], xb[:n], xa[n:], xb[n:]
    cap = min(xa.shape[1], xb.shape[1], n - 1)
    out: dict = {}
    if cca_components is None:
        rng = np.random.default_rng(seed)
        order = rng.permutation(n)
        n_val = max(2, int(round(CCA_VALIDATION * n)))
        va, fit = order[:n_val], order[n_val:]
        grid = [k for k in CCA_GRID if k <= min(cap, len(fit) - 1)] or [min(2, cap)]
        scores = {k: recall_at_k(_cca_similarity(xa_tr[fit], xb_tr[fit], xa_tr[va], xb_tr[va], k), (5,))["recall@5"]
                  for k in grid}
        cca_components = max(grid, key=lambda k: (scores[k], -k))
        out["selection"] = {str(k): v for k, v in scores.items()}
    k = max(1, min(int(cca_components), cap))  # 1 only when a side has a single feature
    out.update(recall_at_k(_cca_similarity(xa_tr, xb_tr, xa_te, xb_te, k), ks))
    out.update({f"chance@{int(key.split('@')[1])}": v for key, v in chance_recall(len(test), ks).items()})
    out.update(n=len(test), n_train=n, n_components=k, pca_components=int(xa.shape[1]))
    return out


def cross_modal_baselines(cohort: Cohort, emb: dict, held_out: Collection[str] | None, options: dict,
                          cca_components: int | None = None, pca_components: int = PCA_COMPONENTS,
                          seed: int = 0) -> dict:
    """``{"cca:<a>-<b>": result}`` for every pair of ``emb``'s pairs, on the patients the model's retrieval uses.

    A pair with the slide, a modality the cohort lacks, or no held-out patients is reported as skipped.
    """
    from .retrieval import patient_pair_space

    out = {}
    for key in sorted(emb.get("pairs", {})):
        a, b = key.split("-")
        name = f"cca:{key}"
        if "wsi" in (a, b):
            out[name] = {"skipped": "the cohort holds no raw slide features (compare with embed --mean-pool)"}
        elif a not in cohort.modalities or b not in cohort.modalities:
            out[name] = {"skipped": f"the cohort has no {a if a not in cohort.modalities else b} matrix"}
        elif held_out is None:
            out[name] = {"skipped": "the embeddings name no held-out patients (the model's retrieval is on its "
                                    "training patients; a CCA fitted on other patients would not be comparable)"}
        else:
            try:
                ids, _, _ = patient_pair_space(emb, a, b, held_out)
                out[name] = cca_retrieval(cohort, a, b, ids, options, cca_components, pca_components, seed)
            except (KeyError, ValueError) as e:
                out[name] = {"skipped": str(e)}
    return out


def describe(options_source: str, pca_components: int, cca_components: int | None) -> dict:
    """How the baselines were made, as written into results.json."""
    return {"raw": "cohort matrix through the model's per-modality preprocessing, fitted on each training fold; "
                   f"options: {options_source}",
            "pca": f"PCA to {pca_components} components of the raw features, fitted on each training fold",
            "cca": "scikit-learn CCA on the pca features of each side, fitted on the cohort's patients with both "
                   "modalities that the model did not hold out; recall@k on the model's held-out patients; components "
                   + (f"fixed at {cca_components}" if cca_components else
                      f"chosen among {list(CCA_GRID)} by recall@5 on a seeded {CCA_VALIDATION:.0%} of the training "
                      "patients")}
