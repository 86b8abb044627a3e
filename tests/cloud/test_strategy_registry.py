"""make_strategy and cluster_of."""

from __future__ import annotations

import numpy as np
import pytest

from ftlct.cloud.strategies import STRATEGIES, FederationState, make_strategy


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_every_registered_name_builds(name):
    params = {"max_norm": 1.0} if name == "norm_clipping" else {}
    assert make_strategy(name, **params).aggregate is not None


def test_unknown_name_is_a_value_error():
    with pytest.raises(ValueError, match="unknown strategy 'krum'"):
        make_strategy("krum")


def test_unknown_parameter_is_a_value_error():
    with pytest.raises(ValueError, match="bad parameters for strategy 'fedavg'"):
        make_strategy("fedavg", momentum=0.9)


def test_cluster_of_follows_membership_and_falls_back():
    w = {"w": np.zeros(1, np.float32)}
    state = FederationState(
        models={"global.0": w, "global.1": w},
        membership={"a": "global.1", "b": "global.0", "c": "global.0", "d": "gone"},
    )
    strategy = make_strategy("cfl")
    assert strategy.cluster_of(state, "a") == "global.1"
    # unknown sites, and sites whose cluster no longer exists, go to the most populated cluster
    assert strategy.cluster_of(state, "new") == "global.0"
    assert strategy.cluster_of(state, "d") == "global.0"
    assert (
        make_strategy("fedavg").cluster_of(FederationState(models={"global": w}), "x") == "global"
    )
