"""Per-slide claims: independent ``preprocess`` jobs on one ``--out`` compute every slide exactly once."""
from __future__ import annotations

import json
import multiprocessing
import os
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest

from pathalign.io.features import is_complete
from pathalign.slides.locks import SlideLocks
from pathalign.slides.patch import PatchConfig
from pathalign.slides.pipeline import PipelineConfig, run_pipeline
from pathalign.slides.segment import SegmentConfig
from slide_factory import blob_slide

N_SLIDES = 10


def _cfg(out):
    return PipelineConfig(out=out, progress=False, patch=PatchConfig(patch_size=64),
                          segment=SegmentConfig(min_fragment_um2=2000))


@pytest.fixture(scope="module")
def slides(tmp_path_factory):
    d = tmp_path_factory.mktemp("lock_slides")
    for i in range(N_SLIDES):
        blob_slide(d / f"s{i:02d}.tiff", size=(768, 512), downsamples=(1,), seed=i)
    return sorted(d.glob("*.tiff"))


@pytest.fixture(scope="module")
def reference(slides, tmp_path_factory):
    out = tmp_path_factory.mktemp("single")
    summary = run_pipeline(slides, _cfg(out))
    assert (summary.status == "done").all(), summary
    return out


def _job(ready: Path, start: Path, out: Path, summary: Path, slides: list[Path]) -> None:
    """One ``preprocess`` job in a forked process (the test's imports are shared, so it starts at once)."""
    import torch

    torch.set_num_threads(1)
    ready.touch()
    while not start.exists():
        time.sleep(0.005)
    run_pipeline(slides, _cfg(out)).to_csv(summary, sep="\t", index=False)


def _features(path):
    with h5py.File(path) as fh:
        return fh["coords"][()], fh["fragment"][()], fh["features"][()]


@pytest.mark.parametrize("jobs", [2, 3])
def test_concurrent_jobs_share_one_out(slides, reference, tmp_path, jobs):
    out = tmp_path / "shared"
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_job, args=(tmp_path / f"ready{j}", tmp_path / "start", out, tmp_path / f"summary{j}.tsv",
                                            slides)) for j in range(jobs)]
    for p in procs:
        p.start()
    deadline = time.time() + 60
    while not all((tmp_path / f"ready{j}").exists() for j in range(jobs)):  # every job up: start them together
        assert time.time() < deadline and all(p.exitcode is None for p in procs)
        time.sleep(0.005)
    (tmp_path / "start").touch()
    for p in procs:
        p.join(300)
        assert p.exitcode == 0, p.exitcode
    summaries = [pd.read_csv(tmp_path / f"summary{j}.tsv", sep="\t", keep_default_na=False) for j in range(jobs)]
    done = pd.concat([s[s.status == "done"] for s in summaries])
    # every slide computed exactly once, by the job its row names
    assert Counter(done.slide_id) == {p.stem: 1 for p in slides}, done[["slide_id", "job"]]
    assert not any((s.status == "failed").any() for s in summaries)
    by_job = {s.slide_id: s.job for s in done.itertuples()}
    labels = {f"{socket.gethostname()}:{p.pid}" for p in procs}
    assert set(by_job.values()) <= labels
    for s in summaries:  # each job's report names the job that did each slide, or the live job that held it
        for r in s.itertuples():
            if r.status == "locked":
                assert r.job in labels, (r.slide_id, r.job)
            else:
                assert r.status in ("done", "skipped") and r.job == by_job[r.slide_id], (r.slide_id, r.status, r.job)
    # every file complete, nothing partial or left over, the union equal to one process's run
    feats = out / "features_pathalign-stats"
    assert sorted(p.name for p in feats.iterdir()) == sorted(f"{p.stem}.h5" for p in slides)
    for p in slides:
        assert is_complete(feats / f"{p.stem}.h5")
        for a, b in zip(_features(feats / f"{p.stem}.h5"), _features(reference / "features_pathalign-stats" / f"{p.stem}.h5")):
            np.testing.assert_array_equal(a, b)
        assert json.loads((out / "locks" / f"{p.stem}.done").read_text())["job"] == by_job[p.stem]
    assert sorted(q.suffix for q in (out / "locks").iterdir()) == [".done"] * N_SLIDES
    for sub in ("coords", "segmentation"):
        assert not [q for q in (out / sub).iterdir() if q.name.startswith(".")]


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _write_lock(path: Path, host: str, pid: int, age_s: float = 0.0, job: str = "other-job"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"job": job, "host": host, "pid": pid, "since": time.time() - age_s}))
    os.utime(path, (time.time() - age_s, time.time() - age_s))


def test_a_dead_jobs_lock_is_taken_over(tmp_path):
    locks = SlideLocks(tmp_path, job="me")
    _write_lock(locks.lock_path("a"), socket.gethostname(), _dead_pid())
    assert locks.claim("a") is None  # taken over at once: its pid is gone on this host
    assert json.loads(locks.lock_path("a").read_text())["job"] == "me"
    locks.release("a", done=True)
    assert locks.done_by("a") == "me" and not locks.lock_path("a").exists()


def test_another_hosts_lock_is_kept_until_its_heartbeat_is_stale(tmp_path):
    locks = SlideLocks(tmp_path, job="me", stale_after_s=600)
    _write_lock(locks.lock_path("b"), "node-elsewhere", 12345, age_s=30)
    holder = locks.claim("b")
    assert holder is not None and holder.job == "other-job" and holder.host == "node-elsewhere"
    _write_lock(locks.lock_path("b"), "node-elsewhere", 12345, age_s=601)
    assert locks.claim("b") is None
    locks.close()
    assert not locks.lock_path("b").exists()  # close() gives up what was not done


def test_a_stale_lock_is_taken_over_by_one_job_only(tmp_path):
    first, second = SlideLocks(tmp_path, job="first"), SlideLocks(tmp_path, job="second")
    _write_lock(first.lock_path("c"), "node-elsewhere", 1, age_s=10_000)
    assert first.claim("c") is None
    holder = second.claim("c")  # the new lock is live (this host, pid alive, fresh)
    assert holder is not None and holder.job == "first"
    first.close()
    second.close()


def test_a_slide_held_by_a_live_job_is_reported_with_that_job(slides, tmp_path):
    out = tmp_path / "out"
    _write_lock(out / "locks" / f"{slides[0].stem}.lock", "node-elsewhere", 4242, job="slurm-77_3@node-elsewhere:4242")
    summary = run_pipeline(slides[:2], _cfg(out)).set_index("slide_id")
    row = summary.loc[slides[0].stem]
    assert row.status == "locked" and "slurm-77_3@node-elsewhere:4242" in row.reason and row.job.startswith("slurm-77_3")
    assert summary.loc[slides[1].stem, "status"] == "done"
    assert not (out / "features_pathalign-stats" / f"{slides[0].stem}.h5").exists()
