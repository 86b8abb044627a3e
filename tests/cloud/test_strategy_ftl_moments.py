"""A standardised FTL federation at the cloud: a moments round first (the fleet's mean and std
from the sites' sums, the head unchanged), then gradient rounds that announce them."""

from __future__ import annotations

import numpy as np
import pytest

from ftlct.cloud.strategies import FederationState, SiteUpdate, make_strategy
from ftlct.cloud.strategies.ftl import EXTRA_KEY
from ftlct.export.feature_moments import FeatureMoments, site_moments
from tests.cloud.harness import DIM, delta
from tests.cloud.test_round_coordinator import Rig


def vectors(seed: int, n: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.normal(2.0, 1.5, (n, DIM)) * [1, 2, 3, 4]).astype(np.float32)


def moments_update(rig, site, x, n=None, round_=1, base="v0") -> bytes:
    arrays = site_moments(x).to_arrays()
    n = len(x) if n is None else n
    return rig.update(site, arrays, n=n, round_=round_, base=base, kind="moments")


def standardised_rig(tmp_path, **params):
    return Rig(
        tmp_path,
        strategy="ftl",
        min_sites=2,
        rounds=3,
        strategy_params={"standardise": True, **params},
    )


def test_the_first_round_takes_moments_and_the_next_announces_the_fleets_mean_and_std(tmp_path):
    rig = standardised_rig(tmp_path)
    rig.coordinator.publish_all()
    training = rig.last_round().training
    assert training["update_kind"] == "moments" and training["max_embedding_norm"] == 200.0
    assert "feature_mean" not in training
    xa, xb = vectors(1, 30), vectors(2, 50)
    assert rig.send("a", moments_update(rig, "a", xa)) == "accepted"
    assert rig.send("b", rig.update("b", delta(0.1, (0, 0)))) == "rejected:wrong_update_kind"
    assert rig.send("b", moments_update(rig, "b", xb, n=30)) == "accepted"  # max_site_share
    rig.now += 1000.0
    rig.coordinator.tick()
    model = rig.last_model()
    assert model.round == 1
    np.testing.assert_array_equal(model.weights["dense.0.weight"], np.zeros((2, DIM)))
    announced = rig.last_round()
    assert announced.round == 2 and "update_kind" not in announced.training
    # b's 50 slices weigh as a's 30 (the default trust bound): its sums scaled to 30
    expected = (site_moments(xa) + site_moments(xb).scaled(30 / 50)).mean_std()
    np.testing.assert_allclose(announced.training["feature_mean"], expected[0], rtol=1e-5)
    np.testing.assert_allclose(announced.training["feature_std"], expected[1], rtol=1e-5)
    # the gradient rounds take deltas, and refuse moments
    base = model.version
    stray = moments_update(rig, "a", xa, round_=2, base=base)
    assert rig.send("a", stray) == "rejected:wrong_update_kind"
    assert rig.send("a", rig.update("a", delta(0.1, (0, 0)), round_=2, base=base)) == "accepted"


def test_the_moments_survive_a_cloud_restart(tmp_path):
    rig = standardised_rig(tmp_path)
    rig.coordinator.publish_all()
    rig.send("a", moments_update(rig, "a", vectors(3, 20)))
    rig.send("b", moments_update(rig, "b", vectors(4, 20)))
    rig.now += 1000.0
    rig.coordinator.tick()
    before = rig.last_round().training["feature_mean"]
    rig.restart()
    rig.coordinator.publish_all()
    assert rig.last_round().training["feature_mean"] == before


def test_moments_no_clipped_embeddings_could_give_or_of_another_width_are_refused(tmp_path):
    rig = standardised_rig(tmp_path, max_embedding_norm=10.0)
    rig.coordinator.publish_all()
    x = vectors(5, 20)
    far = x.copy()
    far[0] = 1000.0
    assert rig.send("a", moments_update(rig, "a", far)) == "rejected:norm_bound"
    assert rig.send("b", moments_update(rig, "b", x, n=400)) == "rejected:bad_samples"
    wide = site_moments(np.ones((5, DIM + 1), np.float32)).to_arrays()
    payload = rig.update("c", wide, n=5, kind="moments")
    assert rig.send("c", payload) == "rejected:shape_mismatch"
    assert rig.status()["updates_rejected"] == {
        "norm_bound": 1,
        "bad_samples": 1,
        "shape_mismatch": 1,
    }


def head(dim=DIM):
    return {"dense.0.weight": np.zeros((2, dim), np.float32), "dense.0.bias": np.zeros(2)}


def test_a_moments_round_of_no_slice_or_non_finite_sums_fails_loudly():
    strategy = make_strategy("ftl", standardise=True)
    state = FederationState({"global": head()})
    empty = FeatureMoments(np.zeros(DIM), np.zeros(DIM), 0.0).to_arrays()
    with pytest.raises(ValueError, match="its moments count 0 slices"):
        strategy.aggregate(state, [SiteUpdate("a", empty, 1)])
    bad = site_moments(vectors(6, 4)).to_arrays()
    bad["moments.sum"][0] = np.inf
    with pytest.raises(ValueError, match="non-finite"):
        strategy.aggregate(state, [SiteUpdate("a", bad, 4)])
    with pytest.raises(ValueError, match="at least one update"):
        strategy.aggregate(state, [])


def test_standardise_and_its_bound_are_checked_when_the_strategy_is_made():
    with pytest.raises(ValueError, match="standardise must be true or false"):
        make_strategy("ftl", standardise="yes")
    with pytest.raises(ValueError, match="max_embedding_norm"):
        make_strategy("ftl", standardise=True, max_embedding_norm=0.0)


def test_without_standardise_ftl_takes_deltas_from_the_start_and_announces_nothing():
    strategy = make_strategy("ftl")
    state = FederationState({"global": head()})
    assert strategy.update_kind_for(state) == "delta" and strategy.round_training(state) == {}
    new = strategy.aggregate(state, [SiteUpdate("a", delta(0.5, (0, 0)), 1)])
    assert EXTRA_KEY not in new.extra


def test_norm_clipping_leaves_the_moments_alone_and_clips_the_deltas_after_them():
    strategy = make_strategy("ftl", standardise=True, clip_norm=0.1)
    state = FederationState({"global": head()})
    assert strategy.update_kind_for(state) == "moments"
    x = vectors(7, 10) * 10  # sums far longer than the clip, slices within the bound
    state = strategy.aggregate(state, [SiteUpdate("a", site_moments(x).to_arrays(), 10)])
    mean, _ = site_moments(x).mean_std()
    np.testing.assert_allclose(state.extra[EXTRA_KEY]["mean"], mean, rtol=1e-5)
    assert strategy.update_kind_for(state) == "delta"
    assert strategy.round_training(state)["feature_mean"] == state.extra[EXTRA_KEY]["mean"]
    state = strategy.aggregate(state, [SiteUpdate("a", delta(1.0, (0, 0)), 1)])
    assert np.linalg.norm(state.models["global"]["dense.0.weight"]) <= 0.1 + 1e-6


def test_a_head_too_wide_for_the_announcement_cannot_start_a_standardised_federation():
    strategy = make_strategy("ftl", standardise=True)
    with pytest.raises(ValueError, match="at most 4096 fit a round announcement"):
        strategy.start_probe(head(dim=5000))
    probe = strategy.start_probe(head())
    assert set(probe.delta) == {"moments.sum", "moments.sum_sq", "moments.count"}
