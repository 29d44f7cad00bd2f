"""Linear probes and survival models on frozen embeddings, one fold at a time.

Two recipes (:data:`RECIPES`):

* ``pathalign`` (default): features standardised on the training part, balanced class weights,
  C picked from :data:`C_GRID` on the validation part by balanced accuracy; Cox: elastic net
  (l1_ratio 0.5) with the penalty picked on the validation part by C-index. With no validation
  part nothing is tuned on the training data: C = 1 and α = 0.07 (fixed), and the results say so.
* ``patho-bench``: Patho-Bench's own settings (mahmoodlab/Patho-Bench, ExperimentFactory.linprobe /
  .coxnet and experiments/LinearProbeExperiment.py, CoxNetExperiment.py): raw features,
  ``LogisticRegression(C=1, max_iter=10000, random_state=0)`` without class weights, fitted on the
  training part only (the validation part is never used for fitting or tuning); Cox:
  ``CoxnetSurvivalAnalysis(alphas=[0.07], l1_ratio=0.5, max_iter=100000)`` on raw features, test
  C-index from the model's ``score`` (Harrell's C, scikit-survival). α = 0.07 is the value of
  Patho-Bench's tutorial; its ``coxnet`` has no default.
"""
from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score, cohen_kappa_score, f1_score, roc_auc_score
from sklearn.preprocessing import StandardScaler

C_GRID = (1e-3, 1e-2, 1e-1, 1.0, 10.0)
DEFAULT_C = 1.0
DEFAULT_ALPHA = 0.07


@dataclass(frozen=True)
class Recipe:
    """How a probe is fitted.

    Args:
        name: ``pathalign`` or ``patho-bench``.
        cost: logistic-regression C of the patho-bench recipe.
        balanced: balanced class weights in the patho-bench recipe (Patho-Bench's ``balanced``).
        alpha: Cox penalty of the patho-bench recipe.
        l1_ratio: elastic-net mix of the Cox model (both recipes).
    """

    name: str = "pathalign"
    cost: float = 1.0
    balanced: bool = False
    alpha: float = DEFAULT_ALPHA
    l1_ratio: float = 0.5

    def __post_init__(self):
        if self.name not in RECIPES:
            raise ValueError(f"recipe must be one of {RECIPES}, got {self.name!r}")
        if self.cost <= 0 or self.alpha <= 0 or not 0 <= self.l1_ratio <= 1:
            raise ValueError(f"recipe needs cost > 0, alpha > 0 and 0 <= l1_ratio <= 1, got {self}")

    def describe(self) -> dict:
        """The settings as written into results.json."""
        if self.name == "patho-bench":
            cox = (f"CoxnetSurvivalAnalysis(alphas=[{self.alpha}], l1_ratio={self.l1_ratio}, max_iter=100000)"
                   if self.l1_ratio > 0 else f"CoxPHSurvivalAnalysis(alpha={self.alpha}, n_iter=100000)")
            return {"name": self.name, "features": "raw (no scaling)", "tuning": "none; validation part unused",
                    "classification": f"LogisticRegression(C={self.cost}, max_iter=10000, random_state=0, "
                                      f"class_weight={'balanced' if self.balanced else None})",
                    "survival": cox + ", C-index = model.score (Harrell)"}
        return {"name": self.name, "features": "standardised on the training part",
                "tuning": f"C from {list(C_GRID)} by balanced accuracy and the Cox penalty by C-index on the "
                          f"validation part; without one, fixed C={DEFAULT_C} and alpha={DEFAULT_ALPHA}",
                "classification": "LogisticRegression(max_iter=2000, class_weight='balanced')",
                "survival": f"CoxnetSurvivalAnalysis(l1_ratio={self.l1_ratio}), C-index (Harrell)"}


RECIPES = ("pathalign", "patho-bench")


def _standardise(x_tr, x_va, x_te):
    """Scale all three parts by the training part's mean and std (an empty part stays empty)."""
    scaler = StandardScaler().fit(x_tr)
    return tuple(scaler.transform(x) if len(x) else np.asarray(x, float).reshape(0, np.shape(x_tr)[1])
                 for x in (x_tr, x_va, x_te))


def classification_metrics(y_true: np.ndarray, proba: np.ndarray, classes: np.ndarray, ordinal: bool = False) -> dict[str, float]:
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


def linear_probe(x_tr: np.ndarray, y_tr: np.ndarray, x_va: np.ndarray, y_va: np.ndarray, x_te: np.ndarray,
                 y_te: np.ndarray, ordinal: bool = False, seed: int = 0, c_grid: Sequence[float] = C_GRID) -> dict:
    """Logistic regression with C chosen on the validation part (balanced accuracy); test metrics.

    With an empty validation part C is :data:`DEFAULT_C` (no tuning on the training data); ``tuned`` says which.
    """
    x_tr, x_va, x_te = _standardise(x_tr, x_va, x_te)
    if len(y_va) == 0:
        c_grid = (DEFAULT_C,)
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
    out["_tuned"] = "validation" if len(y_va) else "none (no validation part)"
    out["_pred"] = clf.predict(x_te)
    return out


def pathobench_linear_probe(x_tr: np.ndarray, y_tr: np.ndarray, x_te: np.ndarray, y_te: np.ndarray,
                            ordinal: bool = False, cost: float = 1.0, balanced: bool = False) -> dict:
    """Patho-Bench's linear probe: ``LogisticRegression(C=cost, max_iter=10000, random_state=0)`` on raw features.

    As in Patho-Bench (LinearProbeExperiment.train, ClassificationMixin.classification_metrics), labels are
    integers in sorted label order and AUROC is ``roc_auc_score(..., average="macro", multi_class="ovr",
    labels=range(K))`` over all K training classes (absent when it cannot be computed).

    Returns:
        Test metrics and ``_pred`` (predicted labels).
    """
    classes = np.unique(y_tr)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clf = LogisticRegression(C=cost, max_iter=10000, random_state=0,
                                 class_weight="balanced" if balanced else None).fit(x_tr, y_tr)
    proba = clf.predict_proba(x_te)
    out = classification_metrics(y_te, proba, clf.classes_, ordinal)
    out.pop("auroc", None)
    y_int = np.searchsorted(classes, y_te)
    known = np.isin(y_te, classes)
    try:
        if not known.all():
            raise ValueError("test labels unseen in training")
        score = proba[:, 1] if len(classes) == 2 else proba
        out["auroc"] = float(roc_auc_score(y_int, score, average="macro", multi_class="ovr", labels=list(range(len(classes)))))
    except ValueError:
        pass
    out["_pred"] = clf.predict(x_te)
    return out


def concordance_index(time: np.ndarray, event: np.ndarray, risk: np.ndarray) -> float:
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


def cox_probe(x_tr: np.ndarray, t_tr: np.ndarray, e_tr: np.ndarray, x_va: np.ndarray, t_va: np.ndarray,
              e_va: np.ndarray, x_te: np.ndarray, t_te: np.ndarray, e_te: np.ndarray, l1_ratio: float = 0.5) -> dict:
    """Elastic-net Cox (scikit-survival) with the penalty chosen on the validation part; test C-index.

    With an empty validation part the penalty is :data:`DEFAULT_ALPHA` (no tuning on the training data).
    """
    from sksurv.linear_model import CoxnetSurvivalAnalysis
    from sksurv.util import Surv

    x_tr, x_va, x_te = _standardise(x_tr, x_va, x_te)
    y_tr = Surv.from_arrays(e_tr.astype(bool), t_tr.astype(float))
    if len(t_va) == 0:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = CoxnetSurvivalAnalysis(alphas=[DEFAULT_ALPHA], l1_ratio=l1_ratio).fit(x_tr, y_tr)
            risk_te = model.predict(x_te)
        return {"c_index": concordance_index(t_te, e_te, risk_te), "alpha": DEFAULT_ALPHA,
                "_tuned": "none (no validation part)"}
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
    return {"c_index": concordance_index(t_te, e_te, risk_te), "alpha": float(best[1]), "_tuned": "validation"}


def pathobench_cox_probe(x_tr: np.ndarray, t_tr: np.ndarray, e_tr: np.ndarray, x_te: np.ndarray, t_te: np.ndarray,
                         e_te: np.ndarray, alpha: float = DEFAULT_ALPHA, l1_ratio: float = 0.5) -> dict:
    """Patho-Bench's Cox model (CoxNetExperiment): raw features, fixed ``alpha``; C-index = ``model.score``.

    ``CoxnetSurvivalAnalysis(alphas=[alpha], l1_ratio=l1_ratio, max_iter=100000)``, or
    ``CoxPHSurvivalAnalysis(alpha=alpha, n_iter=100000)`` when ``l1_ratio`` is 0, as Patho-Bench does.
    """
    from sksurv.linear_model import CoxnetSurvivalAnalysis, CoxPHSurvivalAnalysis
    from sksurv.util import Surv

    y_tr = Surv.from_arrays(np.asarray(e_tr).astype(bool), np.asarray(t_tr, float))
    y_te = Surv.from_arrays(np.asarray(e_te).astype(bool), np.asarray(t_te, float))
    model = (CoxnetSurvivalAnalysis(alphas=[alpha], l1_ratio=l1_ratio, max_iter=100000) if l1_ratio > 0
             else CoxPHSurvivalAnalysis(alpha=alpha, n_iter=100000))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(x_tr, y_tr)
    return {"c_index": float(model.score(x_te, y_te)), "alpha": float(alpha)}
