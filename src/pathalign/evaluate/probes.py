"""Linear probes and survival models on frozen embeddings, one fold at a time."""
from __future__ import annotations

import warnings

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score, cohen_kappa_score, f1_score, roc_auc_score
from sklearn.preprocessing import StandardScaler

C_GRID = (1e-3, 1e-2, 1e-1, 1.0, 10.0)


def classification_metrics(y_true, proba, classes, ordinal: bool = False) -> dict[str, float]:
    """Balanced accuracy, macro one-vs-rest AUROC, weighted F1 (and quadratic κ for ordinal labels)."""
    y_true = np.asarray(y_true)
    pred = np.asarray(classes)[proba.argmax(1)]
    out = {"balanced_accuracy": float(balanced_accuracy_score(y_true, pred)),
           "weighted_f1": float(f1_score(y_true, pred, average="weighted"))}
    present = np.isin(classes, y_true)
    try:
        if len(classes) == 2:
            out["auroc"] = float(roc_auc_score(y_true == classes[1], proba[:, 1]))
        elif present.sum() >= 2:
            p = proba[:, present] / proba[:, present].sum(1, keepdims=True)
            out["auroc"] = float(roc_auc_score(y_true, p, multi_class="ovr", average="macro", labels=np.asarray(classes)[present]))
    except ValueError:
        pass
    if ordinal:
        out["quadratic_kappa"] = float(cohen_kappa_score(y_true, pred, weights="quadratic"))
    return out


def linear_probe(x_tr, y_tr, x_va, y_va, x_te, y_te, ordinal=False, seed=0, c_grid=C_GRID) -> dict:
    """Logistic regression with C chosen on the validation part (balanced accuracy); test metrics."""
    scaler = StandardScaler().fit(x_tr)
    x_tr, x_va, x_te = scaler.transform(x_tr), scaler.transform(x_va), scaler.transform(x_te)
    best = None
    for c in c_grid:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            clf = LogisticRegression(C=c, max_iter=2000, class_weight="balanced", random_state=seed).fit(x_tr, y_tr)
        score = balanced_accuracy_score(y_va, clf.predict(x_va)) if len(y_va) else 0.0
        if best is None or score > best[0]:
            best = (score, c, clf)
    _, c, clf = best
    out = classification_metrics(y_te, clf.predict_proba(x_te), clf.classes_, ordinal)
    out["C"] = c
    out["_pred"] = clf.predict(x_te)
    return out


def concordance_index(time, event, risk) -> float:
    """Harrell's C: among comparable pairs (the earlier time is an event), the fraction where the earlier
    one has the higher risk; ties in risk count one half."""
    time, event, risk = map(np.asarray, (time, event, risk))
    num = den = 0.0
    for i in range(len(time)):
        if not event[i]:
            continue
        later = time > time[i]
        den += later.sum()
        num += (risk[i] > risk[later]).sum() + 0.5 * (risk[i] == risk[later]).sum()
    if den == 0:
        raise ValueError("no comparable pairs")
    return float(num / den)


def cox_probe(x_tr, t_tr, e_tr, x_va, t_va, e_va, x_te, t_te, e_te, l1_ratio=0.5) -> dict:
    """Elastic-net Cox (scikit-survival) with the penalty chosen on the validation part; test C-index."""
    from sksurv.linear_model import CoxnetSurvivalAnalysis
    from sksurv.util import Surv

    scaler = StandardScaler().fit(x_tr)
    x_tr, x_va, x_te = scaler.transform(x_tr), scaler.transform(x_va), scaler.transform(x_te)
    y_tr = Surv.from_arrays(e_tr.astype(bool), t_tr.astype(float))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = CoxnetSurvivalAnalysis(l1_ratio=l1_ratio, n_alphas=30, alpha_min_ratio=0.01, fit_baseline_model=False)
        path.fit(x_tr, y_tr)
        best = None
        for a in path.alphas_:
            risk = path.predict(x_va, alpha=a)
            try:
                score = concordance_index(t_va, e_va, risk)
            except ValueError:
                score = 0.5
            if best is None or score > best[0]:
                best = (score, a)
        risk_te = path.predict(x_te, alpha=best[1])
    return {"c_index": concordance_index(t_te, e_te, risk_te), "alpha": float(best[1])}
