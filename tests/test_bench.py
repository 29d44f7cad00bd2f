"""Benchmark: metrics against independent computations, split hygiene, bad tasks, Patho-Bench files, the demo."""
from __future__ import annotations

import json

import h5py
import numpy as np
import pandas as pd
import pytest

from pathalign.evaluate.bench import run_bench, run_task
from pathalign.evaluate.probes import classification_metrics, concordance_index, cox_probe, linear_probe
from pathalign.evaluate.retrieval import label_retrieval
from pathalign.evaluate.tasks import Task, derive_tasks, load_pathobench_tasks


def test_concordance_index_by_hand_and_against_scikit_survival():
    time = np.array([2.0, 4.0, 6.0, 8.0])
    event = np.array([1, 0, 1, 1])
    risk = np.array([0.9, 0.1, 0.5, 0.6])
    # comparable pairs (earlier time is an event): (0,1) (0,2) (0,3) (2,3)
    # concordant: 0.9>0.1, 0.9>0.5, 0.9>0.6 yes; 0.5>0.6 no -> 3/4
    assert concordance_index(time, event, risk) == pytest.approx(0.75)
    from sksurv.metrics import concordance_index_censored

    rng = np.random.default_rng(0)
    t, e, r = rng.exponential(10, 60), rng.random(60) < 0.7, rng.standard_normal(60)
    assert concordance_index(t, e, r) == pytest.approx(concordance_index_censored(e, t, r)[0])


def test_classification_metrics_by_hand():
    classes = np.array(["a", "b"])
    y = np.array(["a", "a", "a", "b"])
    proba = np.array([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.2, 0.8]])
    m = classification_metrics(y, proba, classes, ordinal=True)
    # predictions a, a, b, b: recall(a) = 2/3, recall(b) = 1 -> balanced accuracy 5/6
    assert m["balanced_accuracy"] == pytest.approx(5 / 6)
    # AUROC: P(score(b) > score(a)) over the 3 (b, a) pairs: 0.8 > 0.1, 0.4, 0.7 -> 1
    assert m["auroc"] == pytest.approx(1.0)
    # weighted F1: F1(a) = 2*(1*2/3)/(1+2/3) = 0.8 (weight 3/4), F1(b) = 2*(0.5*1)/1.5 = 2/3 (weight 1/4)
    assert m["weighted_f1"] == pytest.approx(0.75 * 0.8 + 0.25 * 2 / 3)
    assert m["quadratic_kappa"] == pytest.approx(0.5)  # 2 classes: Cohen's kappa, p_o = 3/4, p_e = 3/8 + 1/8 -> 0.5


def test_linear_probe_and_cox_learn_a_planted_signal():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((300, 5))
    y = np.where(x[:, 0] + 0.3 * rng.standard_normal(300) > 0, "pos", "neg")
    m = linear_probe(x[:150], y[:150], x[150:200], y[150:200], x[200:], y[200:])
    assert m["balanced_accuracy"] > 0.85 and m["auroc"] > 0.9
    t = rng.exponential(np.exp(-x[:, 1]))
    e = (rng.random(300) < 0.8).astype(int)
    c = cox_probe(x[:150], t[:150], e[:150], x[150:200], t[150:200], e[150:200], x[200:], t[200:], e[200:])
    assert c["c_index"] > 0.65


def test_label_retrieval_excludes_the_same_patient():
    x = np.array([[1.0, 0], [1.0, 0.1], [0, 1.0], [0.1, 1.0]])
    labels = np.array(["a", "a", "b", "b"])
    # every item's nearest other item has its label
    assert label_retrieval(x, labels)["top1_acc"] == pytest.approx(1.0)
    # items 2 and 3 are slides of one patient: each must now retrieve from items 0 and 1 (label a) -> misses
    r = label_retrieval(x, labels, groups=np.array([0, 1, 2, 2]))
    assert r["top1_acc"] == pytest.approx(0.5)
    assert r["mAP@5"] == pytest.approx(0.5)  # items 0, 1: AP 1 (one relevant, first); items 2, 3: no relevant item


def _manifest(n=40, seed=0):
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"case_id": [f"P{i:03d}" for i in range(n)],
                         "cancer_type": rng.choice(["A", "B"], n),
                         "stage": ["I"] * n,
                         "OS_days": rng.integers(10, 1000, n), "OS_event": rng.integers(0, 2, n),
                         "slide_ids": [[f"P{i:03d}-S{k}" for k in range(1 + i % 3)] for i in range(n)]})


def test_split_hygiene_with_several_slides_per_patient():
    tasks = derive_tasks(_manifest(), k=5, seed=3)
    names = {t.name for t in tasks}
    assert names == {"cancer_type", "survival"}  # 'stage' has one class: no task
    for task in tasks:
        assert "slide_id" in task.table and task.table.case_id.duplicated().any()
        for f in task.folds:
            roles = task.table.groupby("case_id")[f].nunique()
            assert (roles == 1).all(), f"a patient is in two parts of {f}"
            assert set(task.table[f]) == {"train", "val", "test"}
        tests = pd.concat([task.table.loc[task.table[f] == "test", "case_id"] for f in task.folds]).drop_duplicates()
        assert len(tests) == task.table.case_id.nunique()  # every patient tested once


def _write_embeddings(path, ids, emb, cases=None):
    with h5py.File(path, "w") as fh:
        g = fh.create_group("wsi")
        g.create_dataset("ids", data=np.array(ids, dtype=object), dtype=h5py.string_dtype())
        g.create_dataset("embeddings", data=emb)
        g.create_dataset("case_ids", data=np.array(cases or ids, dtype=object), dtype=h5py.string_dtype())


def test_bad_tasks_are_skipped_with_their_reason(tmp_path):
    man = _manifest()
    task = derive_tasks(man, k=3)[0]
    rng = np.random.default_rng(0)
    slides = task.table.slide_id.tolist()
    _write_embeddings(tmp_path / "e.h5", slides, rng.standard_normal((len(slides), 4)).astype(np.float32),
                      task.table.case_id.tolist())
    from pathalign.evaluate.embed import read_embeddings

    emb = read_embeddings(tmp_path / "e.h5")
    nomatch = Task("nomatch", "classification", "cancer_type", task.table.assign(slide_id="X-" + task.table.slide_id))
    res, _ = run_task(nomatch, emb)
    assert "no slide_id of the task has an embedding" in res["skipped"]
    one_class = Task("one", "classification", "cancer_type", task.table.assign(cancer_type="A"))
    res, _ = run_task(one_class, emb)
    assert "one class" in res["skipped"]
    no_test = task.table.copy()
    no_test.loc[no_test.fold_1 == "test", "fold_1"] = "train"
    res, _ = run_task(Task("notest", "classification", "cancer_type", no_test), emb)
    assert res["balanced_accuracy"]["n_folds"] == 2 and res["skipped_folds"] == ["fold_1: no test samples"]
    results = run_bench({"m": tmp_path / "e.h5"}, [nomatch, task], tmp_path / "out", plots=False, progress=False)
    md = (tmp_path / "out" / "results.md").read_text()
    assert "skipped: no slide_id" in md and json.loads((tmp_path / "out" / "results.json").read_text())


def test_pathobench_split_folder(tmp_path):
    man = _manifest()
    task = derive_tasks(man, k=3)[0]
    d = tmp_path / "tasks" / "cancer_type"
    d.mkdir(parents=True)
    task.table.rename(columns={"cancer_type": "label"}).to_csv(d / "k=all.tsv", sep="\t", index=False)
    (d / "config.yaml").write_text("task_col: label\ntask_type: classification\nmetrics: [balanced_accuracy]\n")
    tasks = load_pathobench_tasks(tmp_path / "tasks")
    assert [t.name for t in tasks] == ["cancer_type"] and tasks[0].folds == ["fold_0", "fold_1", "fold_2"]


def test_reduced_demo_end_to_end(tmp_path):
    from pathalign.demo import DemoConfig, run_demo

    cfg = DemoConfig(out=tmp_path / "demo", patients=180, slide_size=1024, patch_size=128, genes=300, steps=150,
                     rna_steps=300, folds=4)
    results = run_demo(cfg)
    report = (tmp_path / "demo" / "report.md").read_text()
    full, pool = results["models"]["pathalign (aligned)"], results["models"]["mean pooling"]
    wr = full["cross_modal"]["wsi-rna"]
    assert wr["recall@5"] > 3 * wr["chance@5"], wr
    assert full["tasks"]["cancer_type"]["balanced_accuracy"]["mean"] > pool["tasks"]["cancer_type"]["balanced_accuracy"]["mean"]
    assert "wsi-rna (cross-modal)" in report and (tmp_path / "demo" / "figures" / "attention.png").is_file()
    # re-running reuses every finished stage
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "demo" / ".stages").iterdir()}
    run_demo(cfg)
    assert len(stamps) >= 8 and {p: p.stat().st_mtime_ns for p in stamps} == stamps  # no marker rewritten
