"""Student-t intervals over seeds: the one place ``ablate``, ``missing``, the training-missingness curve and
the benchmarks compute them.

Example:
    >>> r = mean_ci([0.70, 0.74, 0.72])
    >>> round(r["mean"], 3), round(r["half_width"], 3)
    (0.72, 0.05)
"""
from __future__ import annotations

from collections.abc import Iterable

import numpy as np


def mean_ci(values: Iterable[float | None], level: float = 0.95) -> dict:
    """Mean and two-sided t-interval of the mean: ``mean ± t_{n-1,(1+level)/2} · sd / √n`` (sd with n-1).

    Args:
        values: one value per seed; None and non-finite values are left out.
        level: coverage of the interval.

    Returns:
        ``{"mean", "half_width", "low", "high", "n", "values"}`` (``values``: the ones used); with one value
        the interval is undefined (``half_width`` NaN), with none the mean is NaN too.
    """
    from scipy.stats import t as student_t

    x = np.asarray([v for v in values if v is not None and np.isfinite(v)], float)
    n = len(x)
    if n == 0:
        return {"mean": float("nan"), "half_width": float("nan"), "low": float("nan"), "high": float("nan"), "n": 0,
                "values": []}
    mean = float(x.mean())
    hw = float(student_t.ppf((1 + level) / 2, n - 1) * x.std(ddof=1) / np.sqrt(n)) if n > 1 else float("nan")
    return {"mean": mean, "half_width": hw, "low": mean - hw, "high": mean + hw, "n": n, "values": x.tolist()}


def paired_difference(arm: dict, reference: dict, level: float = 0.95) -> dict:
    """``arm - reference`` paired by key (seeds present in both, None left out), with the t-interval of the
    mean difference.

    Args:
        arm, reference: ``{seed: value}``.
        level: coverage of the interval.

    Returns:
        :func:`mean_ci` of the differences, plus ``seeds`` (the paired keys, sorted) and ``excludes_zero``.
    """
    seeds = sorted(s for s in arm if s in reference and arm[s] is not None and reference[s] is not None)
    out = mean_ci([arm[s] - reference[s] for s in seeds], level)
    out["seeds"] = seeds
    out["excludes_zero"] = bool(out["n"] > 1 and (out["low"] > 0 or out["high"] < 0))
    return out
