"""Slide pipeline under hostile conditions: full disk, huge slides, changed settings, bad coordinates."""
from __future__ import annotations

import resource
import signal
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from slide_factory import blob_slide
from pathalign.slides.features_io import is_complete

FSIZE_LIMIT = 16 * 1024  # bytes per file: the small slide's features fit, the big slides' do not


def _limit_file_size():
    resource.setrlimit(resource.RLIMIT_FSIZE, (FSIZE_LIMIT, FSIZE_LIMIT))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit then fail with EFBIG


def test_a_full_disk_fails_only_the_slides_whose_write_fails(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    blob_slide(d / "a_small.tiff", size=(768, 512), blobs=[((300, 250), (150, 120))])
    for name in ("b_big", "c_big"):
        blob_slide(d / f"{name}.tiff", size=(1536, 1024))
    out = tmp_path / "out"
    base = [sys.executable, "-m", "pathalign"]
    # segmentation, thumbnails and coords first, without a limit (the crash came on a rerun that had coords)
    pre = subprocess.run([*base, "patch", str(d), "--out", str(out), "--patch-size", "64", "--quiet"],
                         capture_output=True, text=True, timeout=300)
    assert pre.returncode == 0, pre.stdout + pre.stderr
    proc = subprocess.run([*base, "extract", str(d), "--out", str(out), "--patch-size", "64", "--quiet"],
                          capture_output=True, text=True, timeout=300, preexec_fn=_limit_file_size)
    assert proc.returncode == 3, f"rc {proc.returncode}\n{proc.stdout}\n{proc.stderr[-3000:]}"
    feats = out / "features_pathalign-stats"
    assert sorted(p.name for p in feats.iterdir()) == ["a_small.h5"]  # no partial or temporary files
    assert is_complete(feats / "a_small.h5")
    summary = pd.read_csv(out / "summary_extract.tsv", sep="\t").set_index("slide_id")
    assert summary.loc["a_small", "status"] == "done"
    for name in ("b_big", "c_big"):
        assert summary.loc[name, "status"] == "failed"
        assert f"{name}.h5" in summary.loc[name, "reason"] and "too large" in summary.loc[name, "reason"]
        assert name in proc.stdout
    assert "Traceback" not in proc.stderr
