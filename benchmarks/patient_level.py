"""Patient-level encoding vs the mean of slide embeddings, on a trait that needs two slides.

Writes a synthetic cohort with ``pathalign synth --paired-trait`` (two slides per patient, each with a
binary cue of its own; the patient's ``paired_trait`` is whether the cues differ, an XOR that RNA
carries; see the cohort's ``truth.md``), runs the slide pipeline (segment, patch, ``pathalign-stats``
features) and builds a WSI + RNA cohort once. Then, for every seed, trains two models that differ only
in ``--wsi-level``:

* ``slide``: one slide per patient per step; a patient's embedding = the mean of its slide embeddings;
* ``patient``: the patient's two slides packed as one sequence; one embedding per patient;

embeds the cohort, and scores a linear probe of ``paired_trait`` on each patient's WSI embedding: a
logistic regression on standardised embeddings fitted on the patients the alignment was trained on,
AUROC on the held-out (validation) patients the encoder never saw. (A 5-fold probe over every patient is
also recorded; it is inflated by what the encoder memorised of its training patients' RNA, which
carries the trait, and grows with the steps.) The seed sets the split, the initialisation and the batches; the cohort is the
same for every seed, so the two arms are paired by seed. Sanity rows: the same probe on the mean of
the patient's patch features (no model), and a probe of each slide's own cue on that slide's mean
features (the cue is visible in one slide).

    OMP_NUM_THREADS=1 python benchmarks/patient_level.py --seeds 0,1,2,3,4,5 --out /tmp/patient_level

Prints a Markdown table (paired difference with its 95 % t-interval, :func:`pathalign.evaluate.ablate.paired_difference`)
and writes ``results.json`` under ``--out``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import pandas as pd


def build_data(out: Path, patients: int, slide_size: int, cohort_seed: int) -> tuple[Path, Path]:
    """The synthetic cohort (paired trait), its features and the built cohort folder; reused when present."""
    from pathalign.cohort import CohortSources, build_cohort
    from pathalign.slides.patch import PatchConfig
    from pathalign.slides.pipeline import PipelineConfig, find_slides, run_pipeline
    from pathalign.slides.segment import SegmentConfig
    from pathalign.synth import SynthConfig, generate_cohort

    syn, cohort = out / "synth", out / "cohort"
    if (cohort / "cohort.json").is_file():
        return syn, cohort
    t0 = time.perf_counter()
    generate_cohort(syn, SynthConfig(patients=patients, seed=cohort_seed, slide_size=slide_size, genes=200,
                                     paired_trait=True), workers=1, progress=False)
    pipe = PipelineConfig(out=out / "slides", progress=False, patch=PatchConfig(patch_size=128),
                          segment=SegmentConfig(min_fragment_um2=2_000))
    run_pipeline(find_slides([str(syn / "slides")]), pipe)
    build_cohort(CohortSources(clinical=str(syn / "clinical.tsv"), slides=str(syn / "slides.tsv"),
                               features=str(pipe.features_dir), rna=str(syn / "rna_tpm.tsv.gz")), cohort,
                 progress=False)
    print(f"data: {patients} patients, slides, features and cohort in {time.perf_counter() - t0:.0f} s", flush=True)
    return syn, cohort


def probe_auroc(x: np.ndarray, y: np.ndarray, seed: int = 0) -> float:
    """Stratified 5-fold cross-validated AUROC of a logistic probe on standardised ``x``."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=5000))
    cv = StratifiedKFold(5, shuffle=True, random_state=seed)
    return float(cross_val_score(clf, x, y, cv=cv, scoring="roc_auc").mean())


def patient_vectors(emb_path: Path) -> dict[str, np.ndarray]:
    """Per patient, the mean of its ``wsi`` rows (a patient-level model's rows are its patient's embedding)."""
    from pathalign.io.embeddings import read_embeddings

    g = read_embeddings(emb_path)["wsi"]
    acc: dict[str, list] = {}
    for c, e in zip(g["case_ids"], g["embeddings"]):
        acc.setdefault(c, []).append(np.asarray(e, np.float64))
    return {c: np.mean(v, 0) for c, v in acc.items()}


def heldout_auroc(x: np.ndarray, ids: list[str], labels: pd.Series, heldout: set[str]) -> float:
    """AUROC on the held-out patients of a logistic probe fitted on the others (standardised on them)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    test = np.array([c in heldout for c in ids])
    y = labels[ids].to_numpy()
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=5000)).fit(x[~test], y[~test])
    return float(roc_auc_score(y[test], clf.predict_proba(x[test])[:, 1]))


def train_and_score(cohort: Path, run: Path, level: str, seed: int, steps: int, labels: pd.Series) -> dict:
    """Train one arm, embed the cohort, and score the probes of ``paired_trait``.

    Returns:
        ``heldout`` (the probe fitted on the alignment-training patients, AUROC on the held-out ones: the
        figure reported), ``cv_all`` (5-fold over every patient: inflated by what the encoder memorised of
        its training patients' RNA), ``rna_heldout`` (the held-out probe on the RNA embeddings).
    """
    from pathalign.evaluate.embed import embed_with_model
    from pathalign.io.embeddings import read_embeddings
    from pathalign.train.trainer import TrainConfig, Trainer

    cfg = TrainConfig.from_preset("tiny", steps=steps, seed=seed, wsi_level=level, modalities=["wsi", "rna"],
                                  progress=False, val_every=0, diagnostics_every=0, checkpoint_every=steps,
                                  max_tokens=256 if level == "slide" else 512)
    Trainer(cohort, run, cfg).fit()
    embed_with_model(run / "model", cohort, run / "embeddings.h5", progress=False)
    emb = read_embeddings(run / "embeddings.h5")
    heldout = set(emb["_attrs"]["heldout_patients"])
    vec = patient_vectors(run / "embeddings.h5")
    ids = [c for c in labels.index if c in vec]
    x = np.array([vec[c] for c in ids])
    g = emb["rna"]
    rna_ids = [c for c in g["ids"] if c in labels.index]
    rna_x = np.asarray(g["embeddings"])[[g["ids"].index(c) for c in rna_ids]]
    return {"heldout": heldout_auroc(x, ids, labels, heldout), "cv_all": probe_auroc(x, labels[ids].to_numpy()),
            "rna_heldout": heldout_auroc(rna_x, rna_ids, labels, heldout)}


def sanity(syn: Path, cohort: Path, labels: pd.Series) -> dict:
    """Probes without a model: the trait from the mean patch features of a patient, each cue from its slide's."""
    from pathalign.cohort import load_cohort
    from pathalign.io.features import read_patch_features

    co = load_cohort(cohort)
    feats = Path(co.meta["slides_dir"])
    truth = pd.read_parquet(syn / "truth.parquet").set_index("case_id")
    per_patient, both, slide_x, slide_y = {}, {}, [], []
    for case, sids in zip(co.manifest.case_id, co.manifest.slide_ids):
        rows, means = [], []
        for sid in sorted(sids):
            f = read_patch_features(feats / f"{sid}.h5").features.astype(np.float64)
            rows.append(f)
            means.append(f.mean(0))
            slide_x.append(f.mean(0))
            slide_y.append(int(truth.loc[case, f"paired_cue_{int(sid[-1])}"]))
        if rows:
            per_patient[case] = np.concatenate(rows).mean(0)
        if len(means) == 2:
            both[case] = means
    ids = [c for c in labels.index if c in per_patient]
    # a reader given both slides and told the cues: each slide's cue probability from its mean features
    # (cross-fitted on the hidden per-slide cues), the trait scored as |p(slide 1) - p(slide 2)|
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    prob = cross_val_predict(make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000)), np.array(slide_x),
                             np.array(slide_y), cv=5, method="predict_proba")[:, 1]
    p_of, k = {}, 0
    for case, sids in zip(co.manifest.case_id, co.manifest.slide_ids):
        p_of[case] = prob[k:k + len(sids)]
        k += len(sids)
    pair = [c for c in labels.index if c in both]
    from sklearn.metrics import roc_auc_score

    oracle = roc_auc_score(labels[pair].to_numpy(), [abs(p_of[c][0] - p_of[c][1]) for c in pair])
    return {"mean_patch_features_trait_auroc": probe_auroc(np.array([per_patient[c] for c in ids]), labels[ids].to_numpy()),
            "single_slide_cue_auroc": probe_auroc(np.array(slide_x), np.array(slide_y)),
            "two_slide_cue_reader_trait_auroc": float(oracle)}


def plot(result: dict, path: Path) -> None:
    """Per seed, the two arms' AUROC joined by a line, with the no-model and two-slide-reader references."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seeds = [str(s) for s in result["seeds"]]
    fig, ax = plt.subplots(figsize=(5.2, 3.4), dpi=120)
    for s in seeds:
        ax.plot([0, 1], [result["scores"]["slide"][s], result["scores"]["patient"][s]], "-o", color="0.55", lw=1, ms=4)
    for x, k in ((0, "slide"), (1, "patient")):
        m = result["mean_ci"][k]
        ax.errorbar([x + 0.08], [m["mean"]], yerr=[[m["half_width"]], [m["half_width"]]], fmt="s", color="C3", capsize=4)
    refs = result["sanity"]
    ax.axhline(refs["mean_patch_features_trait_auroc"], color="C0", ls="--", lw=1, label="mean patch features (no model, 5-fold)")
    ax.axhline(refs["two_slide_cue_reader_trait_auroc"], color="C2", ls=":", lw=1.2,
               label="both slides read apart, cues told (5-fold)")
    ax.axhline(0.5, color="k", lw=0.6)
    ax.set_xticks([0, 1], ["mean of slide\nembeddings", "patient-level\npacking"])
    ax.set_xlim(-0.4, 1.5)
    ax.set_ylim(0.25, 0.9)
    ax.set_ylabel("paired_trait AUROC, held-out patients")
    d = result["paired_difference"]
    ax.set_title(f"two-slide trait, {len(seeds)} seeds: patient − slide = {d['mean']:+.3f} "
                 f"[{d['low']:+.3f}, {d['high']:+.3f}]", fontsize=8)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    from pathalign.evaluate.ablate import mean_ci, paired_difference

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="/tmp/pathalign_patient_level")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--patients", type=int, default=300)
    p.add_argument("--slide-size", type=int, default=768)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--cohort-seed", type=int, default=0)
    p.add_argument("--plot", default=None, help="also draw the per-seed figure to this PNG")
    p.add_argument("--replot", action="store_true", help="only draw --plot from --out's results.json (no training)")
    args = p.parse_args()
    out = Path(args.out)
    if args.replot:
        plot(json.loads((out / "results.json").read_text()), Path(args.plot))
        return
    out.mkdir(parents=True, exist_ok=True)
    seeds = [int(s) for s in args.seeds.split(",")]
    syn, cohort = build_data(out, args.patients, args.slide_size, args.cohort_seed)
    clinical = pd.read_csv(syn / "clinical.tsv", sep="\t").set_index("case_id")
    labels = (clinical["paired_trait"] == "discordant").astype(int)
    checks = sanity(syn, cohort, labels)
    scores: dict[str, dict[int, float]] = {"slide": {}, "patient": {}}
    times: dict[str, list[float]] = {"slide": [], "patient": []}
    rna: dict[str, dict[int, float]] = {"slide": {}, "patient": {}}
    cv_all: dict[str, dict[int, float]] = {"slide": {}, "patient": {}}
    for seed in seeds:
        for level in ("slide", "patient"):
            t0 = time.perf_counter()
            got = train_and_score(cohort, out / f"run_{level}_{seed}", level, seed, args.steps, labels)
            times[level].append(time.perf_counter() - t0)
            scores[level][seed], cv_all[level][seed], rna[level][seed] = got["heldout"], got["cv_all"], got["rna_heldout"]
            print(f"seed {seed} {level:>7}: paired_trait AUROC on held-out patients {got['heldout']:.3f} (5-fold over "
                  f"all patients {got['cv_all']:.3f}; RNA embedding, held out {got['rna_heldout']:.3f}; "
                  f"{times[level][-1]:.0f} s)", flush=True)
    diff = paired_difference(scores["patient"], scores["slide"])
    result = {"seeds": seeds, "args": vars(args), "scores": {k: {str(s): v for s, v in d.items()} for k, d in scores.items()},
              "mean_ci": {k: mean_ci(list(d.values())) for k, d in scores.items()}, "paired_difference": diff,
              "rna_embedding_heldout_auroc": {k: {str(s): v for s, v in d.items()} for k, d in rna.items()},
              "cv_all_patients_auroc": {k: {str(s): v for s, v in d.items()} for k, d in cv_all.items()},
              "cv_all_paired_difference": paired_difference(cv_all["patient"], cv_all["slide"]),
              "sanity": checks, "seconds_per_run": {k: float(np.mean(v)) for k, v in times.items()},
              "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch threads {os.environ.get('OMP_NUM_THREADS')}"}
    (out / "results.json").write_text(json.dumps(result, indent=2))
    if args.plot:
        plot(result, Path(args.plot))

    def cell(d):
        return f"{d['mean']:.3f} ± {d['half_width']:.3f}"

    n = len(seeds)
    print(f"\n| WSI embedding of the patient | paired_trait AUROC on held-out patients, mean ± 95 % t-CI half-width "
          f"({n} seeds) |")
    print("|---|---|")
    print(f"| mean of slide embeddings (`--wsi-level slide`) | {cell(result['mean_ci']['slide'])} |")
    print(f"| patient-level packing (`--wsi-level patient`) | {cell(result['mean_ci']['patient'])} |")
    print(f"| paired difference, patient − slide | {cell(diff)} (CI [{diff['low']:.3f}, {diff['high']:.3f}]) |")
    print("\nper seed: " + ", ".join(f"{s}: slide {scores['slide'][s]:.3f} / patient {scores['patient'][s]:.3f}"
                                      for s in seeds))
    print("5-fold over all patients (memorisation included): " + ", ".join(
        f"{k} {cell(mean_ci(list(d.values())))}" for k, d in cv_all.items()))
    print("RNA embedding → trait AUROC (held out): " + ", ".join(f"{k} {mean_ci(list(d.values()))['mean']:.3f}" for k, d in rna.items()))
    print(f"sanity: mean patch features → trait AUROC {checks['mean_patch_features_trait_auroc']:.3f}; "
          f"one slide's mean features → its own cue AUROC {checks['single_slide_cue_auroc']:.3f}; both slides' mean "
          f"features read apart, cue told → trait AUROC {checks['two_slide_cue_reader_trait_auroc']:.3f}")


if __name__ == "__main__":
    main()
