"""A hostile run: resume on a rebuilt cohort, slide-id collisions, zero-patch slides, orphaned workers, stale files."""
from __future__ import annotations

import json

import pytest
import torch

from cohort_tables import build, patients, slides_cohort, train_cfg, trained_run, write_features, write_tables
from pathalign.train.trainer import Trainer, TrainingError


@pytest.fixture(scope="module")
def checkpointed(tmp_path_factory):
    """A 3-step run on a small molecular cohort, checkpointed every step."""
    tmp = tmp_path_factory.mktemp("resume")
    cohort, run = trained_run(tmp)
    return cohort, run, tmp


def _build_id(cohort):
    return json.loads((cohort / "cohort.json").read_text())["build_id"]


@pytest.mark.parametrize("change", ["values", "patients", "modalities"])
def test_resume_on_another_cohort_is_refused_in_one_line_naming_both_builds(checkpointed, tmp_path, change):
    cohort, run, _ = checkpointed
    kw = {"values": dict(seed=99), "patients": dict(ids=[p.replace("AA", "BB") for p in patients()]),
          "modalities": dict(methylation=False)}[change]
    other = tmp_path / "other"
    build(write_tables(tmp_path / "in", **kw), other)
    with pytest.raises(TrainingError) as e:
        Trainer(other, run, train_cfg(), resume=True)
    msg = str(e.value)
    assert _build_id(cohort) in msg and _build_id(other) in msg and "\n" not in msg, msg


def test_checkpoint_records_cohort_build_and_preprocessing(checkpointed):
    from pathalign.train.run_identity import preprocessing_id

    cohort, run, _ = checkpointed
    state = torch.load(run / "checkpoints" / (run / "checkpoints" / "latest.txt").read_text().strip(),
                       weights_only=True)
    assert state["cohort_build_id"] == _build_id(cohort)
    assert state["preprocessing_id"] == preprocessing_id(json.loads(state["preprocessing"]))
    assert sorted(json.loads(state["modalities"])) == ["cnv", "methylation", "rna"]
    Trainer(cohort, run, train_cfg(), resume=True)  # the same cohort resumes


def test_older_checkpoint_without_build_id_is_checked_by_its_patients(checkpointed, tmp_path):
    import shutil

    cohort, run, _ = checkpointed
    old = tmp_path / "run"
    shutil.copytree(run, old)
    path = old / "checkpoints" / (old / "checkpoints" / "latest.txt").read_text().strip()
    state = torch.load(path, weights_only=True)
    for k in ("cohort_build_id", "preprocessing_id", "modalities"):
        state.pop(k)
    torch.save(state, path)
    Trainer(cohort, old, train_cfg(), resume=True)
    other = tmp_path / "other"
    build(write_tables(tmp_path / "in", ids=[p.replace("AA", "BB") for p in patients()]), other)
    with pytest.raises(TrainingError, match=r"patients of its train/val splits are not in .*TCGA-AA-"):
        Trainer(other, old, train_cfg(), resume=True)


def test_slides_whose_ids_collide_are_refused_naming_both_files_and_the_batch_goes_on(tmp_path):
    from pathalign.slides.patch import PatchConfig
    from pathalign.slides.pipeline import PipelineConfig, run_pipeline
    from slide_factory import blob_slide

    d = tmp_path / "in"
    d.mkdir()
    small = dict(size=(768, 512), blobs=[((300, 250), (150, 120))])
    blob_slide(d / "a.tiff", **small)
    blob_slide(d / "a.tif", seed=1, **small)  # another slide, the same name but for the extension
    blob_slide(d / "b.tiff", **small)
    out = tmp_path / "out"
    cfg = PipelineConfig(out=out, progress=False, patch=PatchConfig(patch_size=64))
    summary = run_pipeline(sorted(d.iterdir()), cfg).set_index("path")
    for name in ("a.tif", "a.tiff"):
        row = summary.loc[str(d / name)]
        assert row.status == "failed", summary
        assert str(d / "a.tif") in row.reason and str(d / "a.tiff") in row.reason
    assert summary.loc[str(d / "b.tiff"), "status"] == "done"
    assert sorted(p.name for p in cfg.features_dir.iterdir()) == ["b.h5"]
    # a rerun (e.g. a.tiff was processed before a.tif appeared) still refuses both, never "skipped"
    again = run_pipeline(sorted(d.iterdir()), cfg).set_index("path")
    assert (again.loc[[str(d / "a.tif"), str(d / "a.tiff")], "status"] == "failed").all()


def test_cohort_build_reports_zero_patch_slides_and_does_not_count_them(tmp_path):
    empty = {f"{patients()[3]}-S1"}
    cohort, sids, _ = slides_cohort(tmp_path, empty)
    man = cohort.manifest.set_index("case_id")
    assert not man.loc[patients()[3], "has_wsi"] and man.loc[patients()[3], "slide_ids"] == []
    assert man.has_wsi.sum() == len(sids) - 1
    assert any(d["sample"] in empty and "zero patches" in d["reason"] for d in cohort.meta["dropped"])
    assert any("zero patches" in w for w in cohort.meta["warnings"])
    assert "zero patches" in (cohort.path / "report.md").read_text()


def test_training_checks_every_slide_before_step_1_and_names_the_unusable(tmp_path, capsys):
    cohort, sids, feats = slides_cohort(tmp_path)
    # after the build the features change: a slide re-extracted without tissue, one with another dim
    write_features(feats, sids[:2], empty={sids[0]})
    write_features(feats, sids[2:3], dim=8)
    cfg = train_cfg(steps=2, batch_size=len(sids), val_fraction=0.0, modalities=["wsi", "rna", "cnv"],
                    checkpoint_every=10)
    Trainer(cohort.path, tmp_path / "run", cfg).fit()  # every patient is drawn at every step
    err = capsys.readouterr().err
    assert "2 slides left out" in err and sids[0] in err and "zero patches" in err and sids[2] in err, err
    assert sids[1] not in err


def _children(pid: int) -> list[int]:
    """Live processes whose parent is ``pid`` (from /proc)."""
    import os

    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stat = open(f"/proc/{d}/stat").read()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            if int(fields[1]) == pid and fields[0] != "Z":
                out.append(int(d))
    return out


def _kill_all(pids: list[int]) -> None:
    """SIGKILL the processes this test started (those still alive)."""
    import os
    import signal

    for pid in pids:
        if _alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _alive(pid: int) -> bool:
    try:
        state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.slow
@pytest.mark.skipif(not __import__("sys").platform.startswith("linux"), reason="reads /proc (Linux)")
def test_loader_workers_end_when_the_trainer_is_killed(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    cohort, _, _ = slides_cohort(tmp_path)
    script = (
        "import sys; from pathalign.train.trainer import TrainConfig, Trainer\n"
        "cfg = TrainConfig.from_preset('tiny', steps=100000, batch_size=32, workers=2, progress=False, seed=0, val_fraction=0.0,\n"
        "    checkpoint_every=100000, diagnostics_every=0, modalities=['wsi', 'rna', 'cnv'])\n"
        f"Trainer({str(cohort.path)!r}, {str(tmp_path / 'run')!r}, cfg).fit()\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    workers: list[int] = []
    try:
        deadline = time.time() + 90
        while time.time() < deadline and len(workers) < 2 and proc.poll() is None:
            time.sleep(0.2)
            workers = _children(proc.pid)
        assert len(workers) >= 2, f"no loader workers seen (rc {proc.poll()}): {proc.stderr.read()[-2000:]}"
        time.sleep(1)  # let the workers fill their result queue
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        wait = 3.0  # torch's own check of the parent runs every 5 s, and never in a worker blocked at exit
        deadline = time.time() + wait
        while time.time() < deadline and any(_alive(w) for w in workers):
            time.sleep(0.1)
        left = [w for w in workers if _alive(w)]
        print(f"workers gone after {time.time() - deadline + wait:.2f} s")
        assert not left, f"loader workers {left} outlived their killed parent by {wait} s"
    finally:
        _kill_all(_children(proc.pid) + workers + [proc.pid])


@pytest.mark.skipif(not __import__("sys").platform.startswith("linux"), reason="reads /proc (Linux)")
@pytest.mark.parametrize("prctl", [True, False])
def test_a_worker_ends_with_its_parent_by_prctl_or_by_the_watchdog_thread(prctl):
    import os
    import signal
    import subprocess
    import sys
    import time

    script = (
        "import os, sys, time\n"
        "from pathalign.train import loader_workers as lw\n"
        f"if not {prctl}: lw._set_parent_death_signal = lambda sig: False\n"
        "parent = os.getpid()\n"
        "if os.fork() == 0:\n"
        "    lw.end_with_parent(0, parent)\n"
        "    time.sleep(60); os._exit(0)\n"
        "print('ready', flush=True); time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    child: list[int] = []
    try:
        assert proc.stdout.readline().strip() == "ready"
        deadline = time.time() + 20
        while not _children(proc.pid) and time.time() < deadline:
            time.sleep(0.05)
        child = _children(proc.pid)
        assert child, "the worker did not start"
        time.sleep(0.3)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        deadline = time.time() + 2.0
        while _alive(child[0]) and time.time() < deadline:
            time.sleep(0.05)
        assert not _alive(child[0]), "the worker outlived its parent"
    finally:
        _kill_all(_children(proc.pid) + child + [proc.pid])


@pytest.mark.slow
def test_temporary_files_of_killed_checkpoint_writes_are_removed_on_start(checkpointed, tmp_path):
    import os
    import subprocess
    import sys

    cohort, _, _ = checkpointed
    run = tmp_path / "run"
    script = (  # the process dies (SIGKILL) inside its second checkpoint write, after creating the file
        "import os, signal, torch\n"
        "from pathalign.train.trainer import TrainConfig, Trainer\n"
        "n = [0]\n"
        "save = torch.save\n"
        "def dying_save(obj, f, *a, **k):\n"
        "    n[0] += 1\n"
        "    if n[0] == 2:\n"
        "        open(f, 'wb').close(); os.kill(os.getpid(), signal.SIGKILL)\n"
        "    return save(obj, f, *a, **k)\n"
        "torch.save = dying_save\n"
        "cfg = TrainConfig.from_preset('tiny', steps=3, batch_size=8, progress=False, seed=0, checkpoint_every=1,\n"
        "                              diagnostics_every=0)\n"
        f"Trainer({str(cohort)!r}, {str(run)!r}, cfg).fit()\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == -9, proc.stderr[-2000:]
    ckpts = run / "checkpoints"
    left = [p for p in ckpts.iterdir() if p.name.endswith(".tmp")]
    assert len(left) == 1 and left[0].stat().st_size == 0, sorted(ckpts.iterdir())
    old = 1_000_000_000  # long ago
    os.utime(left[0], (old, old))
    fresh = ckpts / ".step_0000009.pt.999999999.tmp"  # a dead pid, but written a moment ago: maybe another host
    fresh.write_bytes(b"")
    mine = ckpts / f".notes.txt.{os.getpid()}.tmp"  # a live writer (this process)
    mine.write_bytes(b"")
    os.utime(mine, (old, old))
    Trainer(cohort, run, train_cfg(), resume=True).fit()
    assert not left[0].exists() and fresh.exists() and mine.exists()


def test_a_run_on_some_modalities_resumes_without_repeating_them(checkpointed, tmp_path):
    cohort, _, _ = checkpointed
    run = tmp_path / "run"
    Trainer(cohort, run, train_cfg(modalities=["rna", "cnv"])).fit()
    (run / "checkpoints" / "latest.txt").write_text("step_0000002.pt")  # as if killed after step 2
    resumed = Trainer(cohort, run, train_cfg(), resume=True)
    assert resumed.data.modalities == ["rna", "cnv"] and resumed.start_step == 2
    resumed.fit()
