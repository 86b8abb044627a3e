"""Coordinate median, trimmed mean and norm clipping against hand-computed results."""

from __future__ import annotations

import numpy as np
import pytest

from ftlct.cloud.strategies import FederationState, SiteUpdate, make_strategy
from ftlct.cloud.strategies.trimmed_mean import trimmed_mean


def _state(w):
    return FederationState(models={"global": {"w": np.asarray(w, dtype=np.float32)}})


def _updates(*deltas, n=1):
    return [SiteUpdate(f"s{i}", {"w": np.asarray(d, np.float32)}, n) for i, d in enumerate(deltas)]


def test_median_ignores_one_outlier_per_coordinate():
    new = make_strategy("median").aggregate(
        _state([0.0, 0.0]), _updates([1, 50], [2, -3], [100, 1])
    )
    np.testing.assert_allclose(new.models["global"]["w"], [2.0, 1.0])


def test_median_is_unweighted():
    updates = [
        SiteUpdate("a", {"w": np.array([0.0], np.float32)}, 1000),
        SiteUpdate("b", {"w": np.array([5.0], np.float32)}, 1),
        SiteUpdate("c", {"w": np.array([6.0], np.float32)}, 1),
    ]
    new = make_strategy("median").aggregate(_state([0.0]), updates)
    assert float(new.models["global"]["w"][0]) == pytest.approx(5.0)


def test_trimmed_mean_drops_the_extremes_per_coordinate():
    # 5 sites, beta 0.2 -> k = 1 per end: mean(2, 3, 4) = 3 and mean(-1, 0, 1) = 0
    new = make_strategy("trimmed_mean", beta=0.2).aggregate(
        _state([10.0, 0.0]), _updates([1, 0], [2, -1], [3, 1], [4, 99], [100, -99])
    )
    np.testing.assert_allclose(new.models["global"]["w"], [13.0, 0.0])


def test_trimmed_mean_keeps_at_least_one_value():
    stacked = np.array([[1.0], [2.0]])
    np.testing.assert_allclose(trimmed_mean(stacked, 0.49), [1.5])


def test_trimmed_mean_refuses_beta_of_one_half():
    with pytest.raises(ValueError, match="beta"):
        make_strategy("trimmed_mean", beta=0.5)


def test_norm_clipping_bounds_each_site_then_averages():
    # [3, 4] has norm 5 -> clipped to [0.6, 0.8]; [0, 0.5] is inside the bound
    new = make_strategy("norm_clipping", max_norm=1.0).aggregate(
        _state([0.0, 0.0]), _updates([3, 4], [0, 0.5])
    )
    np.testing.assert_allclose(new.models["global"]["w"], [0.3, 0.65], rtol=1e-6)


def test_clip_norm_composes_with_any_strategy():
    strategy = make_strategy("median", clip_norm=1.0)
    new = strategy.aggregate(_state([0.0]), _updates([10], [-0.5], [0.25]))
    assert float(new.models["global"]["w"][0]) == pytest.approx(0.25)
    assert strategy.name == "median+clip"
