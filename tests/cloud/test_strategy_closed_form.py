"""The closed_form strategy: one round gives the pooled-data head; bad statistics are refused."""

from __future__ import annotations

import numpy as np
import pytest

from ftlct.cloud.strategies import FederationState, SiteUpdate, make_strategy
from ftlct.export.closed_form_head import site_statistics, solve_head


def data(seed=0, dim=5):
    rng = np.random.default_rng(seed)
    x = np.concatenate([rng.normal(m, 1.0, (40, dim)) for m in (-1.0, 1.0)]).astype(np.float32)
    return x, np.repeat([0, 1], 40)


def initial(dim=5):
    return FederationState(
        {
            "global": {
                "dense.0.weight": np.zeros((2, dim), np.float32),
                "dense.0.bias": np.zeros(2, np.float32),
            }
        }
    )


def updates(x, y, parts):
    return [
        SiteUpdate(f"site-{i}", site_statistics(x[p], y[p], 2).to_arrays(), len(p))
        for i, p in enumerate(parts)
    ]


def test_one_round_gives_the_head_of_the_pooled_data_under_full_label_skew():
    x, y = data()
    parts = [np.arange(0, 40), np.arange(40, 60), np.arange(60, 80)]  # site-0 all class 0
    strategy = make_strategy("closed_form")
    state = strategy.aggregate(initial(), updates(x, y, parts))
    central = solve_head(site_statistics(x, y, 2))
    assert state.round == 1 and state.membership == {f"site-{i}": "global" for i in range(3)}
    for name in ("dense.0.weight", "dense.0.bias"):
        assert np.allclose(state.models["global"][name], central[name], atol=1e-5)


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        (lambda u: [u[0], u[0]], "two updates"),
        (lambda u: [SiteUpdate("s", u[0].delta, 10**6)], "n_samples"),
        (lambda u: [SiteUpdate("s", u[0].delta, 5, "nowhere")], "unknown cluster"),
        (lambda u: [SiteUpdate("s", {"dense.0.weight": np.zeros((2, 5))}, 5)], "statistics need"),
    ],
)
def test_bad_updates_are_refused(tamper, message):
    x, y = data()
    good = updates(x, y, [np.arange(80)])
    with pytest.raises(ValueError, match=message):
        make_strategy("closed_form").aggregate(initial(), tamper(good))


def test_statistics_of_another_dimension_do_not_fit_the_head():
    x, y = data(dim=7)
    with pytest.raises(ValueError, match="do not fit the cluster's head"):
        make_strategy("closed_form").aggregate(initial(dim=5), updates(x, y, [np.arange(80)]))


def test_a_cluster_whose_sites_hold_one_class_is_refused():
    x, y = data()
    with pytest.raises(ValueError, match="fewer than two classes"):
        make_strategy("closed_form").aggregate(initial(), updates(x, y, [np.arange(40)]))


def test_bad_parameters_are_refused_at_construction():
    with pytest.raises(ValueError, match="solver"):
        make_strategy("closed_form", solver="svm")
    with pytest.raises(ValueError, match="shrinkage"):
        make_strategy("closed_form", shrinkage=0)


def test_the_cloud_check_names_a_stable_reason_for_each_refusal():
    from ftlct.cloud.strategies.strategy_utils import UpdateMismatch

    x, y = data()
    good = updates(x, y, [np.arange(80)])[0]
    nan = {k: v.copy() for k, v in good.delta.items()}
    nan["stats.class_sums"][0, 0] = np.nan
    wide = updates(*data(dim=7), [np.arange(80)])[0]
    cases = [
        (SiteUpdate("s", good.delta, 10**6), "bad_samples"),
        (SiteUpdate("s", nan, 80), "non_finite"),
        (SiteUpdate("s", wide.delta, 80), "shape_mismatch"),
        (SiteUpdate("s", good.delta, 80, "elsewhere"), "wrong_cluster"),
    ]
    strategy = make_strategy("closed_form")
    strategy.check_update(initial(), good)  # a good update passes
    for update, reason in cases:
        with pytest.raises(UpdateMismatch) as caught:
            strategy.check_update(initial(), update)
        assert caught.value.reason == reason
