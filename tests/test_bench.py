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
from pathalign.evaluate.tasks import Task, TaskError, derive_tasks, load_pathobench_tasks


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
    from pathalign.io.embeddings import read_embeddings

    emb = read_embeddings(tmp_path / "e.h5")
    nomatch = Task("nomatch", "classification", "cancer_type", task.table.assign(slide_id="X-" + task.table.slide_id))
    with pytest.raises(TaskError, match=f"{len(slides)} of {len(slides)} slide_ids have no embedding"):
        run_task(nomatch, emb)
    res, _ = run_task(nomatch, emb, allow_missing=True)
    assert "no slide_id of the task has an embedding" in res["skipped"]
    assert res["n"]["samples_without_embedding"] == len(slides)
    one_class = Task("one", "classification", "cancer_type", task.table.assign(cancer_type="A"))
    res, _ = run_task(one_class, emb)
    assert "one class" in res["skipped"]
    no_test = task.table.copy()
    no_test.loc[no_test.fold_1 == "test", "fold_1"] = "train"
    res, _ = run_task(Task("notest", "classification", "cancer_type", no_test), emb)
    assert res["balanced_accuracy"]["n_folds"] == 2 and res["skipped_folds"] == ["fold_1: no test samples"]
    results = run_bench({"m": tmp_path / "e.h5"}, [nomatch, task], tmp_path / "out", plots=False, progress=False,
                        allow_missing=True)
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


@pytest.mark.slow
def test_reduced_demo_end_to_end(tmp_path):
    from pathalign.demo import DemoConfig, run_demo

    cfg = DemoConfig(out=tmp_path / "demo", patients=180, slide_size=1024, patch_size=128, genes=300, steps=300,
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


# ------------------------------------------------------------------ Patho-Bench split conventions, counts, recipes
def _slides_split(n_patients=30, k=3, seed=5, val=True):
    """Patients with 1-3 slides, a binary label per patient, survival columns, folds by patient."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_patients):
        y = "mut" if p % 2 else "wt"
        surv = {"PFS_days": float(10 + rng.integers(0, 900)), "PFS_event": int(rng.random() < 0.7),
                "DSS_days": float(10 + rng.integers(0, 900)), "DSS_event": int(rng.random() < 0.5)}
        for s in range(1 + p % 3):
            row = {"slide_id": f"P{p:02d}-S{s}", "case_id": f"P{p:02d}", "label": y, **surv}
            for f in range(k):
                row[f"fold_{f}"] = "test" if p % k == f else ("val" if val and p % k == (f + 1) % k and p < 12 else "train")
            rows.append(row)
    return pd.DataFrame(rows)


def _emb_for(path, table, seed=5, d=4):
    rng = np.random.default_rng(seed)
    slides = table.drop_duplicates("slide_id")
    x = rng.standard_normal((len(slides), d)).astype(np.float32)
    x[:, 0] += (slides.label == "mut").to_numpy() * 1.5
    _write_embeddings(path, slides.slide_id.tolist(), x, slides.case_id.tolist())
    return x


def _write_task(root, name, table, cfg):
    import yaml

    d = root / name
    d.mkdir(parents=True)
    table.to_csv(d / "k=all.tsv", sep="\t", index=False)
    (d / "config.yaml").write_text(yaml.safe_dump(cfg))


def test_sample_col_case_id_scores_each_patient_once(tmp_path):
    table = _slides_split()
    _emb_for(tmp_path / "e.h5", table)
    _write_task(tmp_path / "t", "bycase", table, {"task_col": "label", "sample_col": "case_id"})
    _write_task(tmp_path / "t", "byslide", table, {"task_col": "label", "sample_col": "slide_id"})
    tasks = {t.name: t for t in load_pathobench_tasks(tmp_path / "t")}
    from pathalign.io.embeddings import read_embeddings

    emb = read_embeddings(tmp_path / "e.h5")
    res, preds = run_task(tasks["bycase"], emb)
    n_test = table.drop_duplicates("case_id").groupby("fold_0").size()["test"]
    assert res["n"]["samples_used"] == table.case_id.nunique() and res["n"]["folds"]["fold_0"]["test"] == n_test
    assert len(preds[preds.fold == "fold_0"]) == n_test and not preds.duplicated(["case_id", "fold"]).any()
    res, _ = run_task(tasks["byslide"], emb)
    assert res["n"]["samples_used"] == len(table) and res["sample_col"] == "slide_id"


def test_survival_columns_are_named_by_the_task_and_one_unreadable_task_is_skipped(tmp_path):
    table = _slides_split()
    _emb_for(tmp_path / "e.h5", table)
    _write_task(tmp_path / "t", "PFS", table, {"task_col": "PFS", "sample_col": "case_id", "extra_cols": ["PFS_days", "PFS_event"]})
    _write_task(tmp_path / "t", "DSS", table, {"task_col": "DSS", "sample_col": "case_id", "task_type": "survival"})
    _write_task(tmp_path / "t", "broken", table.drop(columns=["label"]), {"task_col": "label", "sample_col": "case_id"})
    (tmp_path / "t" / "badyaml").mkdir()
    table.to_csv(tmp_path / "t" / "badyaml" / "k=all.tsv", sep="\t", index=False)
    (tmp_path / "t" / "badyaml" / "config.yaml").write_text("task_col: [unclosed\n")
    results = run_bench({"m": tmp_path / "e.h5"}, load_pathobench_tasks(tmp_path / "t"), tmp_path / "out",
                        plots=False, progress=False)
    got = results["models"]["m"]["tasks"]
    assert results["tasks"]["PFS"]["type"] == "survival" and results["tasks"]["DSS"]["type"] == "survival"
    assert got["PFS"]["c_index"]["n_folds"] == 3 and got["DSS"]["c_index"]["n_folds"] == 3
    assert "label column ['label']" in got["broken"]["skipped"] and "broken" in got["broken"]["skipped"]
    assert "config.yaml" in got["badyaml"]["skipped"]
    md = (tmp_path / "out" / "results.md").read_text()
    assert "**broken**: skipped" in md and "**badyaml**: skipped" in md


def test_samples_without_embedding_or_label_are_an_error_or_counted(tmp_path):
    table = _slides_split()
    _emb_for(tmp_path / "e.h5", table[~table.case_id.isin(["P03", "P07"])])  # P03 (1 slide), P07 (2 slides) missing
    table.loc[table.case_id == "P10", "label"] = np.nan  # 2 rows without label
    _write_task(tmp_path / "t", "lab", table, {"task_col": "label", "sample_col": "case_id"})
    _write_task(tmp_path / "t", "bySlide", table, {"task_col": "label", "sample_col": "slide_id"})
    tasks = load_pathobench_tasks(tmp_path / "t")
    with pytest.raises(TaskError, match="2 of 29 case_ids and 3 listed slides have no embedding") as e:
        run_bench({"m": tmp_path / "e.h5"}, tasks, tmp_path / "out", plots=False, progress=False)
    assert "3 of 58 slide_ids" in str(e.value) and "--allow-missing" in str(e.value)
    results = run_bench({"m": tmp_path / "e.h5"}, tasks, tmp_path / "out", plots=False, progress=False,
                        allow_missing=True)
    n = results["models"]["m"]["tasks"]["lab"]["n"]
    assert n["rows"] == len(table) and n["rows_without_label"] == 2
    assert (n["samples"], n["samples_without_embedding"], n["slides_without_embedding"], n["samples_used"]) == (29, 2, 3, 27)
    per_case = table[table.label.notna() & ~table.case_id.isin(["P03", "P07"])].drop_duplicates("case_id")
    for f in ("fold_0", "fold_1", "fold_2"):
        assert n["folds"][f] == {r: int((per_case[f] == r).sum()) for r in ("train", "val", "test")}
    md = (tmp_path / "out" / "results.md").read_text()
    assert "n=27 case_ids, 2 rows without label, 2 without embedding dropped" in md and "n per fold" in md
    from pathalign.cli import main

    assert main(["bench", "--embeddings", f"m={tmp_path / 'e.h5'}", "--tasks", str(tmp_path / "t"), "--allow-missing",
                 "--out", str(tmp_path / "cli")]) == 0
    cli = json.loads((tmp_path / "cli" / "results.json").read_text())
    assert cli["allow_missing"] and cli["models"]["m"]["tasks"]["lab"]["n"] == n


def test_no_validation_part_is_not_tuned_on_training_data_and_the_recipe_is_recorded(tmp_path):
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.preprocessing import StandardScaler

    table = _slides_split(val=False)
    x = _emb_for(tmp_path / "e.h5", table)
    task = Task("lab", "classification", "label", table)
    results = run_bench({"m": tmp_path / "e.h5"}, [task], tmp_path / "out", plots=False, progress=False)
    r = results["models"]["m"]["tasks"]["lab"]
    assert results["recipe"]["name"] == "pathalign" and "SE" in results["aggregation"]
    assert r["tuning"] == {f: "none (no validation part)" for f in ("fold_0", "fold_1", "fold_2")}
    assert r["C"]["per_fold"] == {f: 1.0 for f in ("fold_0", "fold_1", "fold_2")}
    y = table.label.to_numpy()
    for f in ("fold_0", "fold_1", "fold_2"):  # the default recipe with C = 1, computed here
        tr, te = (table[f] == "train").to_numpy(), (table[f] == "test").to_numpy()
        sc = StandardScaler().fit(x[tr])
        clf = LogisticRegression(C=1.0, max_iter=2000, class_weight="balanced", random_state=0).fit(sc.transform(x[tr]), y[tr])
        want = balanced_accuracy_score(y[te], clf.predict(sc.transform(x[te])))
        assert r["balanced_accuracy"]["per_fold"][f] == pytest.approx(want)
    from pathalign.evaluate.probes import Recipe

    results = run_bench({"m": tmp_path / "e.h5"}, [task], tmp_path / "out2", plots=False, progress=False,
                        recipe=Recipe("patho-bench"))
    assert results["recipe"]["name"] == "patho-bench" and "C=1.0" in results["recipe"]["classification"]
    assert "**patho-bench**" in (tmp_path / "out2" / "results.md").read_text()


def test_compare_without_names_keeps_both_and_a_name_clash_is_an_error(tmp_path, capsys):
    from pathalign.cli import main

    table = _slides_split()
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    _emb_for(tmp_path / "a" / "ours.h5", table, seed=1)
    _emb_for(tmp_path / "b" / "base.h5", table, seed=2)
    _emb_for(tmp_path / "b" / "ours.h5", table, seed=3)
    _write_task(tmp_path / "t", "lab", table, {"task_col": "label", "sample_col": "case_id"})
    assert main(["bench", "--embeddings", str(tmp_path / "a" / "ours.h5"), str(tmp_path / "b" / "base.h5"),
                 "--tasks", str(tmp_path / "t"), "--out", str(tmp_path / "out")]) == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert sorted(results["models"]) == ["base", "ours"]
    assert "--compare" not in capsys.readouterr().err
    # --compare is a deprecated alias of more --embeddings: the same models, and a warning
    assert main(["bench", "--embeddings", str(tmp_path / "a" / "ours.h5"), "--compare", str(tmp_path / "b" / "base.h5"),
                 "--tasks", str(tmp_path / "t"), "--out", str(tmp_path / "out-compare")]) == 0
    assert "--compare is deprecated" in capsys.readouterr().err
    again = json.loads((tmp_path / "out-compare" / "results.json").read_text())
    assert sorted(again["models"]) == ["base", "ours"]
    assert results["models"]["ours"]["embeddings"] == str(tmp_path / "a" / "ours.h5")
    from pathalign.evaluate.bench import named_embeddings

    with pytest.raises(TaskError, match="two embeddings are named 'ours'"):
        named_embeddings([str(tmp_path / "a" / "ours.h5"), str(tmp_path / "b" / "ours.h5")])
    assert named_embeddings(["x=a/ours.h5", "b/ours.h5"]) == {"x": "a/ours.h5", "ours": "b/ours.h5"}


def test_a_label_that_cannot_be_split_is_reported_and_the_other_tasks_run(tmp_path):
    man = _manifest()
    man["rare"] = ["X"] + ["Y"] * (len(man) - 1)  # class X has one patient: no stratified folds
    tasks = derive_tasks(man, k=3, labels=["cancer_type", "rare", "stage"])
    by_name = {t.name: t for t in tasks}
    assert "rare" in by_name["rare"].error and "['X']" in by_name["rare"].error
    assert "stage" in by_name["stage"].error and "1 class" in by_name["stage"].error
    slides = by_name["cancer_type"].table
    rng = np.random.default_rng(0)
    _write_embeddings(tmp_path / "e.h5", slides.slide_id.tolist(),
                      rng.standard_normal((len(slides), 4)).astype(np.float32), slides.case_id.tolist())
    results = run_bench({"m": tmp_path / "e.h5"}, tasks, tmp_path / "out", plots=False, progress=False)
    got = results["models"]["m"]["tasks"]
    assert "balanced_accuracy" in got["cancer_type"] and "c_index" in got["survival"]
    assert "rare" in got["rare"]["skipped"] and "stage" in got["stage"]["skipped"]
