"""Clustered FL: the bipartition, the split conditions, and two label-conflicting populations."""

from __future__ import annotations

import numpy as np
import pytest

from ftlct.cloud.strategies import FederationState, SiteUpdate, make_strategy
from ftlct.cloud.strategies.cfl import max_spacing_bipartition

DIM = 6


def test_bipartition_minimises_the_largest_cross_similarity():
    similarity = np.array(
        [
            [1.0, 0.9, -0.5, -0.2],
            [0.9, 1.0, -0.4, 0.1],
            [-0.5, -0.4, 1.0, 0.8],
            [-0.2, 0.1, 0.8, 1.0],
        ]
    )
    a, b = max_spacing_bipartition(similarity)
    assert sorted([a, b]) == [[0, 1], [2, 3]]
    # no other split has a smaller cross maximum (brute force over every bipartition)
    best = similarity[np.ix_(a, b)].max()
    for mask in range(1, 15):
        left = [i for i in range(4) if mask >> i & 1]
        right = [i for i in range(4) if i not in left]
        if left and right:
            assert similarity[np.ix_(left, right)].max() >= best


def _vector_state(dim=2):
    return FederationState(models={"global": {"w": np.zeros(dim, np.float32)}})


def _update(site, vector, n=10, cluster="global"):
    return SiteUpdate(site, {"w": np.asarray(vector, np.float32)}, n, cluster)


def test_opposed_updates_with_a_short_mean_split_the_cluster():
    strategy = make_strategy("cfl", eps1=0.5, eps2=1.0)
    updates = [
        _update("a1", [2, 0.1]),
        _update("a2", [2, -0.1]),
        _update("b1", [-2, 0.1]),
        _update("b2", [-2, -0.1]),
    ]
    new = strategy.aggregate(_vector_state(), updates)
    assert sorted(new.models) == ["global.0", "global.1"]
    assert new.membership == {
        "a1": "global.0",
        "a2": "global.0",
        "b1": "global.1",
        "b2": "global.1",
    }
    # each child = parent + the mean delta of its own members
    np.testing.assert_allclose(new.models["global.0"]["w"], [2.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(new.models["global.1"]["w"], [-2.0, 0.0], atol=1e-6)
    assert new.extra["splits"][0]["parent"] == "global"
    assert new.extra["splits"][0]["cross_similarity"] < 0


@pytest.mark.parametrize(
    ("params", "why"),
    [
        ({"eps1": 0.01, "eps2": 1.0}, "mean norm not below eps1"),
        ({"eps1": 5.0, "eps2": 5.0}, "no update longer than eps2"),
        ({"eps1": 5.0, "eps2": 1.0, "min_cluster_size": 3}, "parts smaller than min_cluster_size"),
    ],
)
def test_no_split_unless_every_condition_holds(params, why):
    updates = [
        _update("a1", [2, 0.5]),
        _update("a2", [2, 0.4]),
        _update("b1", [-1.5, 0.1]),
        _update("b2", [-1.5, -0.1]),
    ]
    new = make_strategy("cfl", **params).aggregate(_vector_state(), updates)
    assert list(new.models) == ["global"], why


def test_split_check_after_waives_eps1_from_that_round_on():
    updates = [
        _update("a1", [2, 0.5]),
        _update("a2", [2, 0.4]),
        _update("b1", [-1.5, 0.1]),
        _update("b2", [-1.5, -0.1]),
    ]
    strategy = make_strategy("cfl", eps1=0.01, eps2=1.0, split_check_after=3)
    early = strategy.aggregate(FederationState(models=_vector_state().models, round=2), updates)
    assert list(early.models) == ["global"]
    late = strategy.aggregate(FederationState(models=_vector_state().models, round=3), updates)
    assert sorted(late.models) == ["global.0", "global.1"]


def test_clusters_split_again_recursively_and_absent_members_follow_the_larger_part():
    strategy = make_strategy("cfl", eps1=0.5, eps2=1.0)
    first = strategy.aggregate(
        FederationState(models=_vector_state().models, membership={"idle": "global"}),
        [
            _update("a1", [2, 0]),
            _update("a2", [2, 0]),
            _update("b1", [-2, 0], n=8),
            _update("b2", [-2, 0], n=8),
        ],
    )
    assert first.membership["idle"] == "global.0"  # a-part has 20 samples, b-part 16
    second = strategy.aggregate(
        first,
        [
            _update("a1", [0, 2], cluster="global.0"),
            _update("a2", [0, -2], cluster="global.0"),
            _update("b1", [-0.1, 0], cluster="global.1"),
        ],
    )
    assert sorted(second.models) == ["global.0.0", "global.0.1", "global.1"]
    assert second.membership["a1"] == "global.0.0" and second.membership["a2"] == "global.0.1"
    assert [s["parent"] for s in second.extra["splits"]] == ["global", "global.0"]


# --------------------------------------------------- logistic-regression populations


def _population(rng, w_true, n_sites, flipped, n=200):
    sites = []
    for _ in range(n_sites):
        x = rng.normal(size=(n, DIM))
        y = (x @ w_true > 0).astype(np.float64)
        sites.append((x, 1.0 - y if flipped else y))
    return sites


def _local_delta(weights, x, y, steps=5, lr=0.5):
    w = weights["w"].astype(np.float64)
    b = weights["b"].astype(np.float64)
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-(x @ w + b)))
        w -= lr * x.T @ (p - y) / len(y)
        b -= lr * np.array([np.mean(p - y)])
    return {"w": (w - weights["w"]).astype(np.float32), "b": (b - weights["b"]).astype(np.float32)}


def _accuracy(weights, x, y):
    return float(np.mean(((x @ weights["w"] + weights["b"]) > 0) == (y > 0.5)))


def _federate(strategy, sites, rounds):
    state = FederationState(
        models={"global": {"w": np.zeros(DIM, np.float32), "b": np.zeros(1, np.float32)}}
    )
    for _ in range(rounds):
        updates = []
        for name, (x, y) in sites.items():
            cluster = strategy.cluster_of(state, name)
            updates.append(
                SiteUpdate(name, _local_delta(state.models[cluster], x, y), len(y), cluster)
            )
        state = strategy.aggregate(state, updates)
    return state


def test_cfl_separates_populations_with_conflicting_labels():
    rng = np.random.default_rng(0)
    w_true = rng.normal(size=DIM)
    sites = {f"a{i}": s for i, s in enumerate(_population(rng, w_true, 4, flipped=False))}
    sites |= {f"b{i}": s for i, s in enumerate(_population(rng, w_true, 4, flipped=True))}
    # eps in delta units: 5 steps at lr 0.5 move a site by ~1; opposite populations cancel
    state = _federate(make_strategy("cfl", eps1=0.2, eps2=0.5), sites, rounds=6)
    assert len(state.models) == 2
    clusters_a = {state.membership[f"a{i}"] for i in range(4)}
    clusters_b = {state.membership[f"b{i}"] for i in range(4)}
    assert len(clusters_a) == 1 and len(clusters_b) == 1 and clusters_a != clusters_b
    for name, (x, y) in sites.items():
        assert _accuracy(state.models[state.membership[name]], x, y) > 0.9, name
    # one shared model cannot serve both populations: FedAvg stays near chance for one of them
    fedavg = _federate(make_strategy("fedavg"), sites, rounds=6).models["global"]
    worst = min(_accuracy(fedavg, x, y) for x, y in sites.values())
    assert worst < 0.7


def test_cfl_keeps_one_cluster_for_iid_sites_even_when_forced_to_check():
    rng = np.random.default_rng(1)
    w_true = rng.normal(size=DIM)
    sites = {f"s{i}": s for i, s in enumerate(_population(rng, w_true, 8, flipped=False))}
    state = _federate(
        make_strategy("cfl", eps1=0.2, eps2=0.0, split_check_after=0), sites, rounds=6
    )
    assert list(state.models) == ["global"]
    assert set(state.membership.values()) == {"global"}
    assert "splits" not in state.extra


def test_absent_members_and_new_sites_follow_the_part_with_more_sites_not_more_samples():
    strategy = make_strategy("cfl", eps1=10.0, eps2=1.0)
    state = FederationState(
        models={"global": {"w": np.zeros(2, np.float32)}},
        membership={"liar": "global", "b": "global", "c": "global", "absent": "global"},
    )
    updates = [
        _update("liar", [2, 0], n=10**12),  # one site claiming every sample in the world
        _update("b", [-2, 0.1], n=100),
        _update("c", [-2, -0.1], n=100),
    ]
    new = strategy.aggregate(state, updates)
    honest = new.membership["b"]
    assert new.membership["c"] == honest != new.membership["liar"]
    assert new.membership["absent"] == honest  # it went with the liar's part on main
    assert strategy.cluster_of(new, "a-new-site") == honest
