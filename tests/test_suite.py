"""The test suite's own rules: random tests are seeded and say their seed; tests needing ../shared skip
with a message when it is absent."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from helpers import seeded_rng

TESTS = Path(__file__).resolve().parent


def test_seeded_rng_is_fixed_per_test_and_overridable(monkeypatch, capsys):
    monkeypatch.delenv("PATHALIGN_TEST_SEED", raising=False)
    monkeypatch.setenv("PYTEST_CURRENT_TEST", "tests/test_x.py::test_a (call)")
    a1, a2 = seeded_rng().random(4), seeded_rng().random(4)
    monkeypatch.setenv("PYTEST_CURRENT_TEST", "tests/test_x.py::test_b (call)")
    b = seeded_rng().random(4)
    assert (a1 == a2).all() and not (a1 == b).all()
    monkeypatch.setenv("PATHALIGN_TEST_SEED", "42")
    assert (seeded_rng().random(4) == seeded_rng(42).random(4)).all()
    out = capsys.readouterr().out
    assert "random test seed: 42 (rerun with PATHALIGN_TEST_SEED=42)" in out


def test_without_shared_the_shipped_data_tests_run_and_real_cohort_tests_skip(tmp_path):
    """A fresh clone with no ../shared: the tests on the data in tests/data (the published encoder's vectors, the
    CMU H&E region, a TCGA MAF) run; those on the real TCGA cohorts of shared/data/real skip and say how to run."""
    shipped = ["test_cohort.py::test_real_tcga_maf_gene_set_is_exact",
               "test_slide_encoder.py::test_parity_with_published_outputs"]
    real = "test_cohort.py::test_real_laml_maf_matches_an_independent_count"
    env = {**os.environ, "PATHALIGN_SHARED": str(tmp_path / "no_shared_here"),
           "PYTHONPATH": str(TESTS.parent / "src")}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-rs", "-p", "no:cacheprovider", *shipped, real],
                          cwd=TESTS, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    counts = dict((k, int(n)) for n, k in re.findall(r"(\d+) (passed|skipped|failed|error)", proc.stdout))
    assert counts == {"passed": 2, "skipped": 1} and "SKIPPED [1] test_cohort.py" in proc.stdout, proc.stdout
    assert "needs ../shared" in proc.stdout and "PATHALIGN_SHARED" in proc.stdout, proc.stdout
