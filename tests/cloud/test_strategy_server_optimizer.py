"""Server optimizers (FedAvgM, FedAdam) against hand-computed numbers, and their persisted buffers."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ftlct.cloud.state import StateStore
from ftlct.cloud.strategies import FederationState, SiteUpdate, make_strategy
from ftlct.cloud.strategies.server_optimizer import EXTRA_KEY


def _state(value=0.0, cluster="global"):
    return FederationState(models={cluster: {"w": np.array([value], np.float32)}})


def _round(strategy, state, *deltas, cluster="global"):
    """One round in which site i sends delta ``deltas[i]`` (equal sample counts)."""
    updates = [
        SiteUpdate(f"s{i}", {"w": np.array([d], np.float32)}, 10, cluster)
        for i, d in enumerate(deltas)
    ]
    return strategy.aggregate(state, updates)


def _w(state, cluster="global"):
    return float(state.models[cluster]["w"][0])


def test_server_momentum_accumulates_the_mean_deltas():
    strategy = make_strategy("fedavg", server_momentum=0.5)
    state = _state()
    # round 1: mean 2 -> v = 2, w = 2; round 2: mean 1 -> v = 0.5 * 2 + 1 = 2, w = 4;
    # round 3: mean -2 -> v = 0.5 * 2 - 2 = -1, w = 3
    seen = []
    for deltas in ((1.0, 3.0), (1.0, 1.0), (-2.0, -2.0)):
        state = _round(strategy, state, *deltas)
        seen.append(_w(state))
    assert seen == pytest.approx([2.0, 4.0, 3.0])


def test_server_lr_scales_the_momentum_step():
    strategy = make_strategy("fedavg", server_momentum=0.5, server_lr=0.5)
    state = _state()
    seen = []
    for delta in (2.0, 1.0, -2.0):
        state = _round(strategy, state, delta)
        seen.append(_w(state))
    assert seen == pytest.approx([1.0, 2.0, 1.5])


def test_fedadam_matches_hand_computation():
    strategy = make_strategy("fedavg", server_optimizer="adam", server_lr=0.1)
    state = _round(strategy, _state(), 2.0)
    # m = 0.1 * 2 = 0.2; v = 0.01 * 4 = 0.04; w = 0.1 * 0.2 / (0.2 + 1e-3)
    assert _w(state) == pytest.approx(0.1 * 0.2 / 0.201, rel=1e-6)
    state = _round(strategy, state, -1.0)
    # m = 0.9 * 0.2 - 0.1 = 0.08; v = 0.99 * 0.04 + 0.01 = 0.0496
    expected = 0.1 * 0.2 / 0.201 + 0.1 * 0.08 / (np.sqrt(0.0496) + 1e-3)
    assert _w(state) == pytest.approx(expected, rel=1e-5)


def test_plain_fedavg_keeps_no_buffers():
    state = _round(make_strategy("fedavg"), _state(), 2.0)
    assert EXTRA_KEY not in state.extra
    assert _w(state) == pytest.approx(2.0)


def test_buffers_are_json_and_idle_clusters_keep_theirs():
    strategy = make_strategy("fedavg", server_momentum=0.5)
    state = FederationState(
        models={"x": {"w": np.zeros(1, np.float32)}, "y": {"w": np.zeros(1, np.float32)}}
    )
    state = strategy.aggregate(
        state,
        [
            SiteUpdate("a", {"w": np.array([2.0], np.float32)}, 1, "x"),
            SiteUpdate("b", {"w": np.array([4.0], np.float32)}, 1, "y"),
        ],
    )
    assert json.loads(json.dumps(state.extra)) == state.extra
    state = _round(strategy, state, 1.0, cluster="x")  # y sits this round out
    assert _w(state, "x") == pytest.approx(2.0 + 0.5 * 2.0 + 1.0)
    assert _w(state, "y") == pytest.approx(4.0)
    state = _round(strategy, state, 0.0, cluster="y")  # y's momentum is still there
    assert _w(state, "y") == pytest.approx(4.0 + 0.5 * 4.0)


def test_a_restart_between_rounds_resumes_the_same_trajectory(tmp_path):
    """The cloud persists ``extra`` with the models; reloading them continues identically."""
    strategy = make_strategy("ftl", server_optimizer="adam", server_lr=0.05)
    rng = np.random.default_rng(0)
    rounds = [
        [
            SiteUpdate(
                f"s{i}",
                {
                    "dense.0.weight": rng.normal(size=(2, 4)).astype(np.float32),
                    "dense.0.bias": rng.normal(size=2).astype(np.float32),
                },
                int(rng.integers(5, 50)),
            )
            for i in range(3)
        ]
        for _ in range(4)
    ]
    start = FederationState(
        models={
            "global": {
                "dense.0.weight": np.zeros((2, 4), np.float32),
                "dense.0.bias": np.zeros(2, np.float32),
            }
        }
    )
    in_memory = start
    for updates in rounds:
        in_memory = strategy.aggregate(in_memory, updates)

    resumed = start
    for number, updates in enumerate(rounds, start=1):
        store = StateStore.open(tmp_path)  # a fresh process: everything comes from the database
        resumed = make_strategy("ftl", server_optimizer="adam", server_lr=0.05).aggregate(
            resumed, updates
        )
        with store.transaction():
            store.models.add("global", f"v{number}", number, None, resumed.models["global"])
            store.models.save_federation(
                resumed.round, {"global": f"v{number}"}, resumed.membership, resumed.extra
            )
        store.close()
        store = StateStore.open(tmp_path)
        resumed, _ = store.models.federation_state()
        store.close()
    for name, value in in_memory.models["global"].items():
        np.testing.assert_array_equal(resumed.models["global"][name], value)
    assert resumed.extra == in_memory.extra


def test_cfl_children_start_with_empty_buffers_and_the_parent_s_are_dropped():
    strategy = make_strategy("cfl", eps1=0.5, eps2=1.0, server_momentum=0.5)
    state = _round(strategy, _state(), 0.1, 0.1)  # no split: momentum 0.1 in "global"
    assert set(state.extra[EXTRA_KEY]) == {"global"}
    updates = [
        SiteUpdate("s0", {"w": np.array([2.0], np.float32)}, 10),
        SiteUpdate("s1", {"w": np.array([-2.0], np.float32)}, 10),
    ]
    state = strategy.aggregate(state, updates)
    assert sorted(state.models) == ["global.0", "global.1"]
    # children = parent + their own mean delta, no inherited momentum
    assert sorted([_w(state, "global.0"), _w(state, "global.1")]) == pytest.approx([-1.9, 2.1])
    assert set(state.extra[EXTRA_KEY]) == {"global.0", "global.1"}


@pytest.mark.parametrize("name", ["median", "trimmed_mean"])
def test_robust_aggregators_move_with_the_same_server_optimizer(name):
    strategy = make_strategy(name, server_momentum=0.5)
    state = _round(strategy, _state(), 1.0, 2.0, 3.0)  # median and trimmed mean: 2
    state = _round(strategy, state, 1.0, 1.0, 1.0)  # v = 0.5 * 2 + 1
    assert _w(state) == pytest.approx(4.0)


@pytest.mark.parametrize(
    "params, match",
    [
        ({"server_optimizer": "yogi"}, "server_optimizer must be one of"),
        ({"server_momentum": 1.0}, "server_momentum must be in"),
        ({"server_lr": 0.0}, "server_lr must be > 0"),
        ({"server_optimizer": "adam", "server_tau": 0.0}, "server_tau must be > 0"),
        ({"server_beta2": -0.1}, "server_beta2 must be in"),
    ],
)
def test_bad_server_settings_are_refused(params, match):
    with pytest.raises(ValueError, match=match):
        make_strategy("fedavg", **params)
