"""Statistics over splits: hand-computed means, standard errors, t intervals, paired differences."""

from __future__ import annotations

import math

import pytest

from ftlct.bench.split_stats import paired_difference, summary, t95


def test_summary_of_three_values_matches_hand_computation():
    stats = summary([0.70, 0.74, 0.78])
    assert stats["n"] == 3 and stats["missing"] == 0
    assert stats["mean"] == pytest.approx(0.74)
    assert stats["sd"] == pytest.approx(0.04)
    assert stats["se"] == pytest.approx(0.04 / math.sqrt(3))
    half = 4.303 * 0.04 / math.sqrt(3)  # t(0.975, df 2)
    assert stats["ci95"] == pytest.approx([0.74 - half, 0.74 + half])


def test_summary_skips_missing_values_and_counts_them():
    stats = summary([None, 2.0, 4.0, None])
    assert (stats["n"], stats["missing"], stats["mean"]) == (2, 2, 3.0)
    assert stats["ci95"][0] < 3.0 < stats["ci95"][1]


def test_one_value_has_no_spread_and_none_has_no_mean():
    assert summary([0.5])["se"] is None and summary([0.5])["mean"] == 0.5
    assert summary([None])["mean"] is None


def test_t_quantiles_approach_the_normal_one():
    assert t95(1) == pytest.approx(12.706)
    assert t95(9) == pytest.approx(2.262)
    assert 1.96 <= t95(200) < t95(50) < t95(30)
    with pytest.raises(ValueError):
        t95(0)


def test_paired_difference_removes_the_shared_split_spread():
    # a is always 0.02 above b, while both swing by 0.2 from split to split
    b = [0.5, 0.7, 0.6, 0.8, 0.55]
    a = [v + 0.02 for v in b]
    diff = paired_difference(a, b)
    assert diff["mean"] == pytest.approx(0.02)
    assert diff["se"] == pytest.approx(0.0, abs=1e-12)
    assert diff["excludes_zero"] and (diff["wins"], diff["losses"]) == (5, 0)
    # unpaired, the same data would give an interval that straddles 0
    unpaired = summary(a)["ci95"][0] - summary(b)["ci95"][1]
    assert unpaired < 0


def test_paired_difference_that_straddles_zero_says_so():
    diff = paired_difference([0.6, 0.5, 0.7], [0.5, 0.6, 0.65])
    assert not diff["excludes_zero"]
    assert (diff["wins"], diff["losses"]) == (2, 1)


def test_paired_difference_skips_splits_missing_either_side():
    diff = paired_difference([1.0, None, 3.0], [0.5, 2.0, None])
    assert diff["n"] == 1 and diff["mean"] == 0.5


def test_paired_samples_must_have_the_same_length():
    with pytest.raises(ValueError, match="length"):
        paired_difference([1.0], [1.0, 2.0])
