"""The one t-interval helper (``pathalign.evaluate.stats``) against scipy, computed independently here."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.stats

from helpers import seeded_rng
from pathalign.evaluate.stats import mean_ci, paired_difference


@pytest.mark.parametrize("n", [2, 3, 5, 11])
@pytest.mark.parametrize("level", [0.9, 0.95])
def test_mean_ci_is_the_student_t_interval(n, level):
    x = seeded_rng().normal(0.7, 0.1, n)
    got = mean_ci(x, level)
    low, high = scipy.stats.t.interval(level, n - 1, loc=x.mean(), scale=scipy.stats.sem(x))
    assert got["n"] == n and got["mean"] == pytest.approx(x.mean())
    assert got["low"] == pytest.approx(low, rel=1e-10) and got["high"] == pytest.approx(high, rel=1e-10)
    assert got["half_width"] == pytest.approx((high - low) / 2, rel=1e-10)


def test_mean_ci_leaves_out_missing_values_and_is_undefined_below_two():
    x = seeded_rng().normal(0.5, 0.2, 4)
    got = mean_ci([x[0], None, x[1], float("nan"), x[2], x[3]])
    low, high = scipy.stats.t.interval(0.95, 3, loc=x.mean(), scale=scipy.stats.sem(x))
    assert got["n"] == 4 and (got["low"], got["high"]) == pytest.approx((low, high), rel=1e-10)
    one = mean_ci([0.5])
    assert one["mean"] == 0.5 and np.isnan(one["half_width"]) and np.isnan(one["low"])
    assert mean_ci([])["n"] == 0 and np.isnan(mean_ci([None])["mean"])


def test_paired_difference_is_the_paired_t_interval_by_seed():
    rng = seeded_rng()
    full = rng.normal(0.8, 0.05, 5)
    arm = full - 0.03 + rng.normal(0, 0.01, 5)
    ref = scipy.stats.ttest_rel(arm, full).confidence_interval(0.95)
    # seeds given out of order, and one seed only the arm has: pairing is by seed, the unpaired one is left out
    a = {s: float(v) for s, v in zip([4, 2, 0, 3, 1], arm[[4, 2, 0, 3, 1]])}
    a[9] = 0.1
    f = {s: float(v) for s, v in enumerate(full)}
    got = paired_difference(a, f)
    assert got["seeds"] == [0, 1, 2, 3, 4]
    assert got["low"] == pytest.approx(ref.low, rel=1e-10) and got["high"] == pytest.approx(ref.high, rel=1e-10)
    assert got["excludes_zero"] == (ref.high < 0 or ref.low > 0)


def test_every_interval_goes_through_the_one_helper(monkeypatch):
    """missing.summarise and the real-TCGA benchmark report use mean_ci (no copy of the formula left)."""
    import importlib.util
    from pathlib import Path

    import pandas as pd

    import pathalign.evaluate.stats as stats_mod
    from pathalign.evaluate import ablate, missing

    assert ablate.mean_ci is mean_ci and ablate.paired_difference is paired_difference
    assert missing.mean_ci is mean_ci
    rng = seeded_rng()
    v = rng.normal(0.6, 0.1, 3)
    df = pd.DataFrame({"kind": "task", "name": "t", "metric": "m", "hidden": "rna", "rate": 0.5, "value": v})
    row = missing.summarise(df).iloc[0]
    low, high = scipy.stats.t.interval(0.95, 2, loc=v.mean(), scale=scipy.stats.sem(v))
    assert (row.ci_low, row.ci_high) == pytest.approx((low, high), rel=1e-10) and row.seeds == 3

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "real_tcga.py"
    spec = importlib.util.spec_from_file_location("real_tcga_stats", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    per_seed = [{"pam50": {"rna/pathalign": float(a), "rna/raw": float(b)}}
                for a, b in zip(rng.normal(0.8, 0.05, 3), rng.normal(0.7, 0.05, 3))]
    calls = []
    monkeypatch.setattr(stats_mod, "mean_ci", lambda values, level=0.95: calls.append(list(values)) or
                        mean_ci(values, level))
    s = bench.summarise(per_seed)["pam50"]
    assert len(calls) == 3  # two rows and one paired difference
    a = np.array([p["pam50"]["rna/pathalign"] for p in per_seed])
    b = np.array([p["pam50"]["rna/raw"] for p in per_seed])
    ref = scipy.stats.ttest_rel(a, b).confidence_interval(0.95)
    (label, model, base, diff), = s["paired"]
    assert (model, base) == ("rna/pathalign", "rna/raw")
    assert (diff["low"], diff["high"]) == pytest.approx((ref.low, ref.high), rel=1e-10)
    assert bench.fmt(s["rows"]["rna/raw"]).startswith(f"{b.mean():.3f} ± ")
