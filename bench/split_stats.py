"""Statistics over splits: mean, standard error, a 95% t interval, paired differences.

One split of ~150 test images has a standard error of ~0.035 macro-F1, so a
method is compared over many splits (each its own test split, site partition
and seed). Splits are the unit: a method's score on split k is one sample,
and two methods are compared by their paired difference split by split (the
same test images, sites and scanners), which removes the split-to-split
spread both share. The interval is Student's t with n - 1 degrees of
freedom (numpy only; the quantiles are tabulated).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

# two-sided 95% quantiles of Student's t, df 1..30
_T95 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip
_T95_LARGE = ((40, 2.021), (60, 2.000), (120, 1.980))


def t95(df: int) -> float:
    """The 0.975 quantile of Student's t with ``df`` degrees of freedom (>= 1)."""
    if df < 1:
        raise ValueError(f"need at least 1 degree of freedom, got {df}")
    if df <= len(_T95):
        return _T95[df - 1]
    for limit, value in _T95_LARGE:
        if df <= limit:
            return value
    return 1.960


def summary(values: Sequence[float | None]) -> dict:
    """``{"n", "mean", "sd", "se", "ci95": [low, high]}`` of the non-null values.

    ``missing`` counts null values (e.g. a target never reached); with one
    value the spread is unknown and ``se`` / ``ci95`` are null.
    """
    present = [float(v) for v in values if v is not None]
    n = len(present)
    result: dict = {"n": n, "missing": len(values) - n}
    if not n:
        return {**result, "mean": None, "sd": None, "se": None, "ci95": None}
    mean = sum(present) / n
    if n < 2:
        return {**result, "mean": mean, "sd": None, "se": None, "ci95": None}
    sd = math.sqrt(sum((v - mean) ** 2 for v in present) / (n - 1))
    se = sd / math.sqrt(n)
    half = t95(n - 1) * se
    return {**result, "mean": mean, "sd": sd, "se": se, "ci95": [mean - half, mean + half]}


def paired_difference(a: Sequence[float | None], b: Sequence[float | None]) -> dict:
    """``summary`` of ``a[k] - b[k]`` over the splits where both exist, plus who wins how often."""
    if len(a) != len(b):
        raise ValueError(f"paired samples differ in length: {len(a)} vs {len(b)}")
    pairs = [(x, y) for x, y in zip(a, b, strict=True) if x is not None and y is not None]
    result = summary([x - y for x, y in pairs])
    result["wins"] = sum(1 for x, y in pairs if x > y)
    result["losses"] = sum(1 for x, y in pairs if x < y)
    ci = result["ci95"]
    result["excludes_zero"] = bool(ci) and (ci[0] > 0 or ci[1] < 0)
    return result


def rounded(stats: dict, digits: int = 4) -> dict:
    """The same dict with its floats rounded (for results.json)."""

    def fix(value):
        if isinstance(value, float):
            return round(value, digits)
        if isinstance(value, list):
            return [fix(v) for v in value]
        return value

    return {k: fix(v) for k, v in stats.items()}
