"""Bounded aggregation weights: a claim is capped, and no site's share exceeds the setting."""

from __future__ import annotations

import pytest

from ftlct.cloud.site_weights import bounded_weights


def _shares(weights):
    total = sum(weights.values())
    return {site: w / total for site, w in weights.items()}


def test_one_huge_claim_gets_exactly_the_maximum_share():
    weights = bounded_weights({"liar": 10**12, "b": 100, "c": 100}, 10**6, 0.5)
    # c = 0.5 * (100 + 100) / (1 - 0.5) = 200: the liar weighs as much as both honest sites
    assert weights == {"liar": 200.0, "b": 100.0, "c": 100.0}
    assert _shares(weights)["liar"] == 0.5


def test_a_tighter_share_lowers_the_cap():
    weights = bounded_weights({"liar": 10**12, "b": 100, "c": 100}, 10**6, 0.4)
    assert weights["liar"] == pytest.approx(0.4 * 200 / 0.6)  # 133.33
    assert _shares(weights)["liar"] == pytest.approx(0.4)


def test_several_large_sites_share_one_cap_and_honest_weights_are_kept():
    claims = {"x": 10**9, "y": 10**8, "a": 10, "b": 20, "c": 30, "d": 40}
    weights = bounded_weights(claims, 10**6, 0.3)
    # two capped: c = 0.3 * 100 / (1 - 0.6) = 75
    assert weights == {"x": 75.0, "y": 75.0, "a": 10.0, "b": 20.0, "c": 30.0, "d": 40.0}
    assert max(_shares(weights).values()) == pytest.approx(0.3)


def test_claims_within_the_bounds_are_untouched():
    claims = {"a": 40, "b": 30, "c": 30}
    assert bounded_weights(claims, 10**6, 0.5) == {"a": 40.0, "b": 30.0, "c": 30.0}


def test_the_sample_cap_applies_alone_when_shares_are_not_bounded():
    assert bounded_weights({"a": 10**12, "b": 100}, 150, 1.0) == {"a": 150.0, "b": 100.0}


def test_too_few_sites_for_the_share_weigh_the_same():
    assert bounded_weights({"a": 10**12, "b": 1}, 10**6, 0.4) == {"a": 1.0, "b": 1.0}
    assert bounded_weights({"alone": 7}, 10**6, 0.5) == {"alone": 7.0}


@pytest.mark.parametrize(("samples", "share"), [(0, 0.5), (10, 0.0), (10, 1.5)])
def test_settings_out_of_range_are_refused(samples, share):
    with pytest.raises(ValueError):
        bounded_weights({"a": 1}, samples, share)
