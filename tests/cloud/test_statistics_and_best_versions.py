"""The round loop with statistics updates (closed_form) and with validation reports (best versions)."""

from __future__ import annotations

import numpy as np
import pytest

from ftlct.cloud.strategies import FederationState, SiteUpdate, make_strategy
from ftlct.export.closed_form_head import site_statistics, solve_head
from ftlct.protocol import exchange
from ftlct.protocol.messages import BestVersionNote
from ftlct.protocol.validation_report import report_metrics
from tests.cloud.harness import FED, delta
from tests.cloud.test_round_coordinator import TOPICS, Rig


def site_data(seed: int, n: int, classes=(0, 1)):
    """Embeddings of the tiny model's 4 dimensions: class c around +-(c - 0.5)."""
    rng = np.random.default_rng(seed)
    y = rng.choice(classes, n)
    x = rng.normal(0, 1, (n, 4)) + np.where(y[:, None] == 1, 1.0, -1.0)
    return x.astype(np.float32), y


def statistics_update(rig, site, x, y, n=None, **kwargs) -> bytes:
    stats = site_statistics(x, y, 2).to_arrays()
    return rig.update(site, stats, n=len(y) if n is None else n, kind="statistics", **kwargs)


def closed_form_rig(tmp_path, **params):
    return Rig(tmp_path, strategy="closed_form", min_sites=2, rounds=1, strategy_params=params)


def past_deadline(rig):
    """Site c never answers: the round closes at its deadline on the quorum of two."""
    rig.now += 1000.0
    rig.coordinator.tick()


def test_statistics_from_two_sites_give_the_head_of_their_slices_pooled_at_bounded_weights(
    tmp_path,
):
    rig = closed_form_rig(tmp_path)
    rig.coordinator.publish_all()
    training = rig.last_round().training
    assert training["update_kind"] == "statistics" and training["solver"] == "discriminant"
    assert training["max_embedding_norm"] == 200.0
    (xa, ya), (xb, yb) = site_data(1, 30, classes=(0,)), site_data(2, 50)  # a: one class only
    assert rig.send("a", statistics_update(rig, "a", xa, ya)) == "accepted"
    assert rig.send("b", statistics_update(rig, "b", xb, yb)) == "accepted"
    past_deadline(rig)
    head = rig.last_model()
    # the default trust bound (limits.max_site_share 0.5) weighs b's 50 slices as a's 30: b's
    # statistics are scaled to 30 slices (its means and covariance kept), then pooled with a's
    b = site_statistics(xb, yb, 2)
    scale = 30 / 50
    bounded = type(b)(b.gram * scale, b.class_sums * scale, b.class_counts * scale)
    pooled = solve_head(site_statistics(xa, ya, 2) + bounded)
    assert head.round == 1 and rig.status()["rounds_completed"] == 1
    for name, value in pooled.items():
        np.testing.assert_allclose(head.weights[name], value, rtol=1e-4, atol=1e-5)


def test_each_federation_refuses_the_other_kind_of_update(tmp_path):
    x, y = site_data(3, 20)
    heads = Rig(tmp_path / "ftl", strategy="ftl")
    assert heads.send("a", statistics_update(heads, "a", x, y)) == "rejected:wrong_update_kind"
    closed = closed_form_rig(tmp_path / "closed")
    assert closed.send("a", closed.update("a", delta(0.1, (0, 0)))) == "rejected:wrong_update_kind"
    assert closed.status()["updates_rejected"] == {"wrong_update_kind": 1}


def test_statistics_are_not_held_to_the_delta_norm_but_to_the_embedding_bound(tmp_path):
    rig = closed_form_rig(tmp_path, max_embedding_norm=10.0)
    x, y = site_data(4, 40)
    x = x * 2.0  # norms ~2-6: the statistics' L2 norm is far above max_delta_norm (20)
    assert rig.send("a", statistics_update(rig, "a", x, y)) == "accepted"
    far = x.copy()
    far[0] = 100.0  # one slice 200 long: no set of embeddings within 10 gives this trace
    assert rig.send("b", statistics_update(rig, "b", far, y)) == "rejected:norm_bound"
    claims = statistics_update(rig, "c", x, y, n=400)  # weighs ten times its slices
    assert rig.send("c", claims) == "rejected:bad_samples"


def test_closed_form_starts_only_from_a_linear_head(tmp_path):
    strategy = make_strategy("closed_form")
    mlp = {
        "dense.0.weight": np.zeros((8, 4), np.float32),
        "dense.0.bias": np.zeros(8, np.float32),
        "dense.1.weight": np.zeros((2, 8), np.float32),
        "dense.1.bias": np.zeros(2, np.float32),
    }
    with pytest.raises(ValueError, match="do not fit"):
        strategy.aggregate(FederationState({"global": mlp}), [strategy.start_probe(mlp)])
    with pytest.raises(ValueError, match="clips deltas"):
        make_strategy("closed_form", clip_norm=1.0)


def test_a_site_weighed_below_its_count_keeps_its_means_but_not_its_share():
    x, y = site_data(5, 60)
    state = FederationState(
        {"global": {"dense.0.weight": np.zeros((2, 4), np.float32), "dense.0.bias": np.zeros(2)}}
    )
    strategy = make_strategy("closed_form")
    a, b = site_statistics(x[:20], y[:20], 2), site_statistics(x[20:], y[20:], 2)
    updates = [SiteUpdate("a", a.to_arrays(), 20), SiteUpdate("b", b.to_arrays(), 20)]  # b: 40
    got = strategy.aggregate(state, updates).models["global"]
    scaled = b.gram * 0.5, b.class_sums * 0.5, b.class_counts * 0.5
    expected = solve_head(a + type(a)(*scaled))
    for name, value in expected.items():
        np.testing.assert_allclose(got[name], value, rtol=1e-4, atol=1e-6)


# ------------------------------------------------------------------ best versions
def reported(rig, site, matrix, round_, base, scale=0.0):
    return rig.update(
        site, delta(scale, (0, 0)), round_=round_, base=base, metrics=report_metrics(matrix)
    )


def test_the_best_version_is_the_one_the_sites_reports_score_highest(tmp_path):
    rig = Rig(tmp_path, strategy="fedavg", min_sites=2, rounds=3)
    good = [np.array([[8, 2], [0, 0]]), np.array([[0, 0], [3, 7]])]  # summed: F1 0.7494
    poor = [np.array([[5, 5], [0, 0]]), np.array([[0, 0], [5, 5]])]  # summed: F1 0.5
    # round 1 judges v0 (the initial head): 0.749 -> best
    for site, matrix in zip("ab", good, strict=True):
        rig.send(site, reported(rig, site, matrix, 1, "v0", 1.0))
    past_deadline(rig)
    v1 = rig.last_model().version
    note = rig.last_round().best_versions["global"]
    assert note == BestVersionNote("v0", 0, pytest.approx((16 / 21 + 14 / 19) / 2), 20)
    # round 2 judges v1: 0.5, worse -> v0 stays best; one report is malformed and ignored
    rig.send("a", reported(rig, "a", poor[0], 2, v1, 1.0))
    broken = rig.update("b", delta(1.0, (0, 0)), round_=2, base=v1, metrics={"vcm_0_0": 3.0})
    rig.send("b", broken)
    past_deadline(rig)
    v2 = rig.last_model().version
    assert rig.last_round().best_versions["global"].version == "v0"
    assert rig.store.counters.all()["validation_reports_ignored"] == 1
    # round 3 judges v2: a perfect report -> v2 is the best, retained on best/global
    for site, matrix in zip("ab", (np.diag([6, 0]), np.diag([0, 4])), strict=True):
        rig.send(site, reported(rig, site, matrix, 3, v2))
    past_deadline(rig)
    final = rig.last_round()
    assert final.status == "finished"
    assert final.best_versions["global"] == BestVersionNote(v2, 2, 1.0, 10)
    best = [p for t, p, retain in rig.published if t == TOPICS.best_model("global") and retain]
    model = exchange.open_global_model(best[-1], rig.cloud.public_b64, FED)
    assert model.version == v2 and model.round == 2
    np.testing.assert_allclose(model.weights["dense.0.weight"], np.full((2, 4), 2.0))


def test_without_reports_no_best_version_is_announced(tmp_path):
    rig = Rig(tmp_path, strategy="fedavg", min_sites=2, rounds=1)
    for site in "ab":
        rig.send(site, rig.update(site, delta(1.0, (0, 0))))
    past_deadline(rig)
    assert rig.status()["rounds_completed"] == 1
    assert rig.last_round().best_versions == {}
    assert not [t for t, _, _ in rig.published if t == TOPICS.best_model("global")]
