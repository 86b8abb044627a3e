"""FedAvg and FTL against hand-computed results."""

from __future__ import annotations

import weakref

import numpy as np
import pytest

from ftlct.cloud.strategies import FederationState, SiteUpdate, make_strategy
from ftlct.cloud.strategies.base import UpdateMismatch


def _state(**models):
    return FederationState(
        models={
            c: {k: np.asarray(v, dtype=np.float32) for k, v in w.items()} for c, w in models.items()
        }
    )


def test_fedavg_is_the_sample_weighted_mean_of_deltas():
    state = _state(**{"global": {"w": [1.0, 2.0], "b": [0.5]}})
    updates = [
        SiteUpdate(
            "a", {"w": np.array([1.0, 0.0], np.float32), "b": np.array([4.0], np.float32)}, 1
        ),
        SiteUpdate(
            "b", {"w": np.array([0.0, 3.0], np.float32), "b": np.array([0.0], np.float32)}, 3
        ),
    ]
    new = make_strategy("fedavg").aggregate(state, updates)
    # w: [1, 2] + (1*[1, 0] + 3*[0, 3]) / 4 = [1.25, 4.25];  b: 0.5 + (1*4 + 3*0) / 4 = 1.5
    np.testing.assert_allclose(new.models["global"]["w"], [1.25, 4.25])
    np.testing.assert_allclose(new.models["global"]["b"], [1.5])
    assert new.models["global"]["w"].dtype == np.float32
    assert new.round == 1
    assert new.membership == {"a": "global", "b": "global"}
    np.testing.assert_array_equal(state.models["global"]["w"], [1.0, 2.0])  # input untouched
    assert state.round == 0


def test_server_learning_rate_scales_the_step():
    state = _state(**{"global": {"w": [0.0]}})
    new = make_strategy("fedavg", server_lr=0.5).aggregate(
        state, [SiteUpdate("a", {"w": np.array([2.0], np.float32)}, 7)]
    )
    np.testing.assert_allclose(new.models["global"]["w"], [1.0])


def test_clusters_aggregate_separately_and_idle_clusters_keep_their_weights():
    state = _state(x={"w": [0.0]}, y={"w": [10.0]}, z={"w": [-1.0]})
    updates = [
        SiteUpdate("a", {"w": np.array([2.0], np.float32)}, 1, "x"),
        SiteUpdate("b", {"w": np.array([4.0], np.float32)}, 1, "x"),
        SiteUpdate("c", {"w": np.array([-6.0], np.float32)}, 5, "y"),
    ]
    new = make_strategy("fedavg").aggregate(state, updates)
    assert float(new.models["x"]["w"][0]) == pytest.approx(3.0)
    assert float(new.models["y"]["w"][0]) == pytest.approx(4.0)
    assert float(new.models["z"]["w"][0]) == pytest.approx(-1.0)


def test_fedavg_streams_updates_without_keeping_them():
    """Memory O(model): a delta can be freed as soon as the next one is read."""
    state = _state(**{"global": {"w": np.zeros(1000)}})
    refs = []
    max_alive = 0

    class Stream:
        def __iter__(self):
            nonlocal max_alive
            for i in range(50):
                max_alive = max(max_alive, sum(ref() is not None for ref in refs))
                delta = np.full(1000, float(i), np.float32)
                refs.append(weakref.ref(delta))
                yield SiteUpdate(f"s{i}", {"w": delta}, 1)

    new = make_strategy("fedavg").aggregate(state, Stream())
    assert max_alive <= 1
    np.testing.assert_allclose(new.models["global"]["w"], np.full(1000, 24.5))


@pytest.mark.parametrize(
    ("update", "message", "reason"),
    [
        (
            SiteUpdate("a", {"w": np.zeros(2, np.float32)}, 1, "nope"),
            "unknown cluster",
            "wrong_cluster",
        ),
        (SiteUpdate("a", {"w": np.zeros(3, np.float32)}, 1), "shape", "shape_mismatch"),
        (SiteUpdate("a", {"v": np.zeros(2, np.float32)}, 1), "tensors differ", "shape_mismatch"),
        (
            SiteUpdate("a", {"w": np.array([0.0, np.nan], np.float32)}, 1),
            "non-finite",
            "non_finite",
        ),
        (
            SiteUpdate("a", {"w": np.array([0.0, np.inf], np.float32)}, 1),
            "non-finite",
            "non_finite",
        ),
        (SiteUpdate("a", {"w": np.zeros(2, np.int32)}, 1), "dtype", "bad_dtype"),
        (SiteUpdate("a", {"w": np.zeros(2, np.float32)}, 0), "n_samples", "bad_samples"),
    ],
)
def test_updates_that_do_not_fit_the_state_are_refused(update, message, reason):
    state = _state(**{"global": {"w": [0.0, 0.0]}})
    for name in ("fedavg", "median", "cfl"):
        strategy = make_strategy(name)
        with pytest.raises(UpdateMismatch, match=message) as refused:
            strategy.aggregate(state, [update])
        assert refused.value.reason == reason
        # the cloud asks the same question before it accepts an update
        with pytest.raises(UpdateMismatch, match=message):
            strategy.check_update(state, update)


def test_two_updates_from_one_site_are_refused():
    state = _state(**{"global": {"w": [0.0]}})
    update = SiteUpdate("a", {"w": np.ones(1, np.float32)}, 1)
    with pytest.raises(UpdateMismatch, match="two updates from site a"):
        make_strategy("fedavg").aggregate(state, [update, update])


def test_ftl_averages_head_tensors():
    state = _state(**{"global": {"dense.0.weight": [[0.0, 0.0]], "dense.0.bias": [1.0]}})
    updates = [
        SiteUpdate(
            "a",
            {
                "dense.0.weight": np.array([[2.0, 0.0]], np.float32),
                "dense.0.bias": np.array([1.0], np.float32),
            },
            2,
        ),
        SiteUpdate(
            "b",
            {
                "dense.0.weight": np.array([[0.0, 4.0]], np.float32),
                "dense.0.bias": np.array([-2.0], np.float32),
            },
            2,
        ),
    ]
    new = make_strategy("ftl").aggregate(state, updates)
    np.testing.assert_allclose(new.models["global"]["dense.0.weight"], [[1.0, 2.0]])
    np.testing.assert_allclose(new.models["global"]["dense.0.bias"], [0.5])


def test_ftl_refuses_tensors_outside_the_head():
    state = _state(**{"global": {"features.0.weight": [1.0], "dense.0.bias": [1.0]}})
    update = SiteUpdate(
        "a",
        {"features.0.weight": np.ones(1, np.float32), "dense.0.bias": np.ones(1, np.float32)},
        1,
    )
    with pytest.raises(ValueError, match="head tensors dense"):
        make_strategy("ftl").aggregate(state, [update])
