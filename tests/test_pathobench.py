"""Patho-Bench interop, end to end: the sample files its loader reads, its split YAML (sample_col, survival
columns <task>_days/<task>_event) and its probe recipe, checked against the rules of Patho-Bench's own code
(mahmoodlab/Patho-Bench: datasets/SlideEmbeddingsDataset.py, Pooler.py, ExperimentFactory.py,
experiments/LinearProbeExperiment.py, experiments/CoxNetExperiment.py, experiments/BaseExperiment.py)."""
from __future__ import annotations

import json
import os

import h5py
import numpy as np
import pandas as pd
import pytest

from pathalign.cli import main
from pathalign.io.features import write_patch_file

SEED = 11
COORD_ATTRS = {"patch_size": 256, "patch_size_level0": 256}


def _patients(n_patients: int, rng) -> dict[str, list[str]]:
    """case_id -> slide ids (1 to 3 slides per patient)."""
    return {f"C{p:02d}": [f"C{p:02d}-S{k}" for k in range(1 + rng.integers(0, 3))] for p in range(n_patients)}


def _write_features(folder, slides: list[str], rng, c: int = 6, signal: dict | None = None) -> dict[str, np.ndarray]:
    """One pathalign features file per slide (3-9 patches); returns slide -> patch features [N, c]."""
    out = {}
    for sid in slides:
        n = int(rng.integers(3, 10))
        feats = rng.standard_normal((n, c)).astype(np.float32)
        if signal is not None:
            feats[:, 0] += signal[sid]
        coords = np.stack([np.arange(n) * 256, np.zeros(n)], 1)
        write_patch_file(folder / f"{sid}.h5", coords, np.zeros(n), COORD_ATTRS, feats)
        out[sid] = feats
    return out


def _write_cohort(folder, patients: dict[str, list[str]]) -> None:
    """A minimal complete cohort folder (manifest + cohort.json with its build id, as cohort build writes it)."""
    from pathalign.io.cohort_folder import FORMAT_VERSION, new_build_id, write_parquet

    folder.mkdir(parents=True, exist_ok=True)
    build_id = new_build_id()
    manifest = pd.DataFrame({"case_id": list(patients), "slide_ids": list(patients.values())})
    write_parquet(manifest, folder / "manifest.parquet", build_id)
    (folder / "cohort.json").write_text(json.dumps({"build_id": build_id, "format_version": FORMAT_VERSION,
                                                    "files": ["manifest.parquet"]}))


def _load_like_pathobench(folder) -> dict[str, np.ndarray]:
    """What Patho-Bench's SlideEmbeddingsDataset does: every <id>.h5 in the folder, features.squeeze(0), 1-D."""
    out = {}
    for file in os.listdir(folder):
        if file.endswith(".h5"):
            with h5py.File(os.path.join(folder, file), "r") as fh:
                features = fh["features"][()].squeeze(0)
            assert features.ndim == 1, f"{file}: features must be 1-dimensional after squeeze(0), got {features.shape}"
            out[os.path.splitext(file)[0]] = features
    return out


def test_mean_pool_writes_sample_files_that_pathobench_loads_and_names_skipped_slides(tmp_path, capsys):
    rng = np.random.default_rng(SEED)
    patients = _patients(5, rng)
    feats = _write_features(tmp_path / "features", [s for v in patients.values() for s in v], rng)
    # a slide with zero patches and a partial (interrupted) features file
    write_patch_file(tmp_path / "features" / "ZERO-S0.h5", np.zeros((0, 2)), np.zeros(0), COORD_ATTRS,
                     np.zeros((0, 6), np.float32))
    with h5py.File(tmp_path / "features" / "PARTIAL-S0.h5", "w") as fh:
        fh.create_dataset("coords", data=np.zeros((4, 2), np.int64))
        fh.attrs["complete"] = False
    _write_cohort(tmp_path / "cohort", patients)
    out = tmp_path / "new" / "dir" / "emb.h5"
    assert main(["embed", "--mean-pool", "--features", str(tmp_path / "features"), "--cohort", str(tmp_path / "cohort"),
                 "--out", str(out), "--name", "mp"]) == 0
    err = capsys.readouterr().err
    assert "ZERO-S0" in err and "zero patches" in err and "PARTIAL-S0" in err and "incomplete" in err, err

    slides = _load_like_pathobench(out.parent / "pathobench_mp" / "by_slide_id")
    assert set(slides) == set(feats)
    for sid, f in feats.items():
        np.testing.assert_allclose(slides[sid], f.mean(0), rtol=1e-6, err_msg=f"seed {SEED}, slide {sid}")
    cases = _load_like_pathobench(out.parent / "pathobench_mp" / "by_case_id")
    assert set(cases) == set(patients)
    for c, sids in patients.items():  # Patho-Bench's late fusion: mean of the slide vectors
        np.testing.assert_allclose(cases[c], np.mean([feats[s].mean(0) for s in sids], 0), rtol=1e-6,
                                   err_msg=f"seed {SEED}, case {c}")
    with h5py.File(out, "r") as fh:
        ids = fh["wsi/ids"][()].astype(str)
        case_ids = fh["wsi/case_ids"][()].astype(str)
    case_of = {s: c for c, v in patients.items() for s in v}
    assert [case_of[s] for s in ids] == list(case_ids)


def test_slide_encoder_embed_creates_its_folder_honours_name_and_writes_case_ids(tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    from conftest import REFERENCE

    weights = {k: v for k, v in load_file(str(REFERENCE / "ep25_small.safetensors")).items() if k.startswith("weights.")}
    save_file(weights, str(tmp_path / "enc.safetensors"))
    rng = np.random.default_rng(SEED)
    patients = {"A": ["A-1", "A-2"], "B": ["B-1"]}
    _write_features(tmp_path / "features", ["A-1", "A-2", "B-1"], rng, c=48)
    with h5py.File(tmp_path / "features" / "PARTIAL.h5", "w") as fh:
        fh.create_dataset("coords", data=np.zeros((4, 2), np.int64))
        fh.attrs["complete"] = False
    _write_cohort(tmp_path / "cohort", patients)
    out = tmp_path / "not" / "yet" / "emb.h5"
    assert main(["embed", "--slide-encoder", "exaone-path-2.5", "--weights", str(tmp_path / "enc.safetensors"),
                 "--features", str(tmp_path / "features"), "--cohort", str(tmp_path / "cohort"), "--out", str(out),
                 "--name", "ep-small", "--quiet"]) == 0
    assert "PARTIAL" in capsys.readouterr().err
    with h5py.File(out, "r") as fh:
        ids = fh["wsi/ids"][()].astype(str).tolist()
        case_ids = fh["wsi/case_ids"][()].astype(str).tolist()
        emb = fh["wsi/embeddings"][()]
    assert ids == ["A-1", "A-2", "B-1"] and case_ids == ["A", "A", "B"]
    root = out.parent / "pathobench_ep-small"
    assert not (out.parent / "pathobench_exaone-path-2.5").exists()
    slides = _load_like_pathobench(root / "by_slide_id")
    np.testing.assert_allclose(slides["B-1"], emb[2], rtol=1e-6)
    cases = _load_like_pathobench(root / "by_case_id")
    np.testing.assert_allclose(cases["A"], emb[:2].mean(0), rtol=1e-5)


def _split(patients: dict[str, list[str]], rng, k: int = 3, with_val: bool = True) -> pd.DataFrame:
    """A Patho-Bench split: one row per slide, folds assigned per case (test = one k-th of the cases)."""
    cases = list(patients)
    order = rng.permutation(len(cases))
    rows = []
    for i, c in enumerate(cases):
        pos = int(np.flatnonzero(order == i)[0])
        for s in patients[c]:
            row = {"slide_id": s, "case_id": c}
            for f in range(k):
                part = "test" if pos % k == f else ("val" if with_val and pos % k == (f + 1) % k and pos < 6 else "train")
                row[f"fold_{f}"] = part
            rows.append(row)
    return pd.DataFrame(rows)


def _pathobench_task(root, name: str, table: pd.DataFrame, cfg: dict) -> None:
    d = root / name
    d.mkdir(parents=True)
    table.to_csv(d / "k=all.tsv", sep="\t", index=False)
    import yaml

    (d / "config.yaml").write_text(yaml.safe_dump(cfg))


def _pathobench_case(tmp_path):
    """Features -> embed --mean-pool (Patho-Bench files) -> a split folder with a PFS task and a mutation task
    (sample_col: case_id) -> bench --recipe patho-bench. Returns the truth used to make it."""
    rng = np.random.default_rng(SEED)
    patients = _patients(36, rng)
    risk = {c: rng.standard_normal() for c in patients}
    signal = {s: risk[c] for c, v in patients.items() for s in v}
    _write_features(tmp_path / "features", list(signal), rng, signal=signal)
    _write_cohort(tmp_path / "cohort", patients)
    assert main(["embed", "--mean-pool", "--features", str(tmp_path / "features"), "--cohort", str(tmp_path / "cohort"),
                 "--out", str(tmp_path / "emb" / "mp.h5"), "--name", "mp"]) == 0

    split = _split(patients, rng)
    case_of = split.set_index("slide_id").case_id
    days = {c: float(np.round(rng.exponential(400 * np.exp(-risk[c])) + 1)) for c in patients}
    event = {c: int(rng.random() < 0.75) for c in patients}
    mut = {c: int(risk[c] + 0.5 * rng.standard_normal() > 0) for c in patients}
    pfs = split.assign(PFS=[int(days[c] > 300) for c in case_of], PFS_days=[days[c] for c in case_of],
                       PFS_event=[event[c] for c in case_of])
    _pathobench_task(tmp_path / "tasks", "PFS", pfs,
                     {"task_col": "PFS", "sample_col": "case_id", "extra_cols": ["PFS_days", "PFS_event"],
                      "metrics": ["cindex"], "label_dict": {0: "short", 1: "long"}})
    _pathobench_task(tmp_path / "tasks", "mut", split.assign(mut=[mut[c] for c in case_of]),
                     {"task_col": "mut", "sample_col": "case_id", "extra_cols": [], "metrics": ["bacc"],
                      "label_dict": {0: "wildtype", 1: "mutant"}})
    assert main(["bench", "--embeddings", str(tmp_path / "emb" / "mp.h5"), "--tasks", str(tmp_path / "tasks"),
                 "--recipe", "patho-bench", "--out", str(tmp_path / "res")]) == 0
    return patients, split, days, event, mut


def test_pathobench_recipe_on_its_file_conventions_equals_a_direct_sklearn_and_sksurv_computation(tmp_path):
    """Per-slide and per-patient files, a split YAML with sample_col: case_id, a PFS survival task and a
    classification task: bench --recipe patho-bench reproduces Patho-Bench's recipe computed here directly."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score, roc_auc_score
    from sksurv.linear_model import CoxnetSurvivalAnalysis
    from sksurv.util import Surv

    patients, split, days, event, mut = _pathobench_case(tmp_path)
    results = json.loads((tmp_path / "res" / "results.json").read_text())
    assert results["recipe"]["name"] == "patho-bench"
    got = results["models"]["mp"]["tasks"]

    # direct computation from the per-patient files, read the way Patho-Bench's loader reads them
    x_case = _load_like_pathobench(tmp_path / "emb" / "pathobench_mp" / "by_case_id")
    per_case = split.drop_duplicates("case_id").set_index("case_id")
    cindex, bacc, auc = [], [], []
    for f in ["fold_0", "fold_1", "fold_2"]:
        tr = per_case.index[per_case[f] == "train"].tolist()
        te = per_case.index[per_case[f] == "test"].tolist()
        assert got["mut"]["n"]["folds"][f] == {"train": len(tr), "val": int((per_case[f] == "val").sum()),
                                               "test": len(te)}
        xtr, xte = np.stack([x_case[c] for c in tr]), np.stack([x_case[c] for c in te])
        model = CoxnetSurvivalAnalysis(alphas=[0.07], l1_ratio=0.5, max_iter=100000)
        model.fit(xtr, Surv.from_arrays([bool(event[c]) for c in tr], [days[c] for c in tr]))
        cindex.append(model.score(xte, Surv.from_arrays([bool(event[c]) for c in te], [days[c] for c in te])))
        clf = LogisticRegression(C=1, max_iter=10000, random_state=0).fit(xtr, [mut[c] for c in tr])
        proba = clf.predict_proba(xte)
        bacc.append(balanced_accuracy_score([mut[c] for c in te], proba.argmax(1)))
        auc.append(roc_auc_score([mut[c] for c in te], proba[:, 1]))
    for (task, metric), values in {("PFS", "c_index"): cindex, ("mut", "balanced_accuracy"): bacc,
                                   ("mut", "auroc"): auc}.items():
        r = got[task][metric]
        assert r["mean"] == pytest.approx(np.mean(values), abs=1e-9), (task, metric, SEED)
        # Patho-Bench's get_mean_se: np.std (ddof 0) / sqrt(number of folds)
        assert r["se"] == pytest.approx(np.std(values) / np.sqrt(len(values)), abs=1e-9), (task, metric, SEED)
    assert got["mut"]["n"]["samples_used"] == len(patients) and got["mut"]["sample_col"] == "case_id"
    assert 0.6 < got["PFS"]["c_index"]["mean"], got["PFS"]  # the planted risk is found
    md = (tmp_path / "res" / "results.md").read_text()
    pfs = got["PFS"]["c_index"]
    assert "Recipe: **patho-bench**" in md and f"n={len(patients)} case_ids" in md
    assert f"{np.mean(cindex):.3f} ± {np.std(cindex) / np.sqrt(len(cindex)):.3f}" in md and pfs["se"] > 0, md


@pytest.mark.skipif(not os.environ.get("PATHALIGN_PATHOBENCH_SRC"),
                    reason="runs Patho-Bench's own experiment classes: set PATHALIGN_PATHOBENCH_SRC to a checkout of "
                           "mahmoodlab/Patho-Bench (its folder holding patho_bench/)")
def test_pathobench_own_experiments_give_the_same_numbers(tmp_path, monkeypatch):
    """Patho-Bench's unmodified LinearProbeExperiment and CoxNetExperiment, built as ExperimentFactory.linprobe /
    .coxnet build them, on pathalign's files: same means and SEs as bench --recipe patho-bench."""
    import sys
    import types

    for name in ("IPython", "IPython.display", "seaborn", "datasets"):  # imported by Patho-Bench, unused here
        if name not in sys.modules:
            monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    if not hasattr(sys.modules["IPython"], "version_info"):
        monkeypatch.setattr(sys.modules["IPython"], "get_ipython", lambda: None, raising=False)
        monkeypatch.setattr(sys.modules["IPython"], "version_info", (9, 0), raising=False)
        monkeypatch.setattr(sys.modules["IPython.display"], "display", print, raising=False)
        monkeypatch.setattr(sys.modules["seaborn"], "set_style", lambda *a, **k: None, raising=False)
    monkeypatch.syspath_prepend(os.environ["PATHALIGN_PATHOBENCH_SRC"])
    from patho_bench.datasets.CombinedDataset import CombinedDataset
    from patho_bench.datasets.LabelDataset import LabelDataset
    from patho_bench.datasets.SlideEmbeddingsDataset import SlideEmbeddingsDataset
    from patho_bench.experiments.CoxNetExperiment import CoxNetExperiment
    from patho_bench.experiments.LinearProbeExperiment import LinearProbeExperiment
    from patho_bench.SplitFactory import SplitFactory

    _pathobench_case(tmp_path)
    ours = json.loads((tmp_path / "res" / "results.json").read_text())["models"]["mp"]["tasks"]
    pooled = str(tmp_path / "emb" / "pathobench_mp" / "by_case_id")
    split, info = SplitFactory.from_local(str(tmp_path / "tasks" / "mut" / "k=all.tsv"),
                                          str(tmp_path / "tasks" / "mut" / "config.yaml"))
    ds = CombinedDataset({"slide": SlideEmbeddingsDataset(split, load_from=pooled),
                          "labels": LabelDataset(split, task_names=["mut"], dtype="int")})
    exp = LinearProbeExperiment(dataset=ds, task_name="mut", num_classes=len(info["label_dict"]), num_bootstraps=100,
                                cost=1, max_iter=10000, balanced_class_weights=False, results_dir=str(tmp_path / "pb_mut"))
    exp.train()
    exp.test()
    theirs = json.loads((tmp_path / "pb_mut" / "test_metrics_summary.json").read_text())
    for ours_key, their_key in (("balanced_accuracy", "bacc"), ("auroc", "macro-ovr-auc")):
        assert ours["mut"][ours_key]["mean"] == pytest.approx(theirs[their_key]["mean"], abs=1e-9)
        assert ours["mut"][ours_key]["se"] == pytest.approx(theirs[their_key]["se"], abs=1e-9)
    split, info = SplitFactory.from_local(str(tmp_path / "tasks" / "PFS" / "k=all.tsv"),
                                          str(tmp_path / "tasks" / "PFS" / "config.yaml"))
    ds = CombinedDataset({"slide": SlideEmbeddingsDataset(split, load_from=pooled),
                          "labels": LabelDataset(split, task_names=["PFS"], extra_attrs=["PFS_event", "PFS_days"],
                                                 dtype="int")})
    exp = CoxNetExperiment(dataset=ds, task_name="PFS", alpha=0.07, l1_ratio=0.5, max_iter=100000, num_bootstraps=100,
                           results_dir=str(tmp_path / "pb_pfs"))
    exp.train()
    exp.test()
    theirs = json.loads((tmp_path / "pb_pfs" / "test_metrics_summary.json").read_text())
    assert ours["PFS"]["c_index"]["mean"] == pytest.approx(theirs["cindex"]["mean"], abs=1e-9)
    assert ours["PFS"]["c_index"]["se"] == pytest.approx(theirs["cindex"]["se"], abs=1e-9)
