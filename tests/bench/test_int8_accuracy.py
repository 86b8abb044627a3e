"""What int8 costs the classifier: the fidelity figures and the multi-split paired F1 drop."""

from __future__ import annotations

import numpy as np
import pytest

from ftlct.bench.perf.int8_accuracy import fidelity, multi_split_drop


def _separable(n_groups=40, per_group=4, dim=16, seed=0):
    """Two classes far apart in embedding space, a few images per group (patient)."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(n_groups) % 2, per_group)
    groups = tuple(f"g{i}" for i in np.repeat(np.arange(n_groups), per_group))
    centres = np.zeros((2, dim), np.float32)
    centres[1, 0] = 6.0
    x = centres[labels] + rng.standard_normal((len(labels), dim)).astype(np.float32)
    return x, labels, groups


def test_fidelity_of_a_copy_is_perfect_and_of_a_scaled_copy_is_its_scale():
    x = np.random.default_rng(0).standard_normal((5, 8))
    same = fidelity(x, x)
    assert same["cosine_min"] == 1.0 and same["rel_error_max"] == 0.0 and same["images"] == 5
    scaled = fidelity(1.1 * x, x)
    assert scaled["cosine_mean"] == 1.0 and scaled["rel_error_mean"] == pytest.approx(0.1)


@pytest.mark.parametrize(
    "shapes", [((4, 8), (4, 9)), ((4, 8), (5, 8)), ((8,), (8,)), ((0, 8), (0, 8))]
)
def test_fidelity_refuses_embeddings_that_do_not_pair_up(shapes):
    a, b = (np.ones(s) for s in shapes)
    with pytest.raises(ValueError, match="do not pair up"):
        fidelity(a, b)


def test_the_same_embeddings_lose_nothing_on_any_split():
    x, labels, groups = _separable()
    result = multi_split_drop(x, x.copy(), labels, groups, n_splits=3)
    assert result["per_split"]["fp32"] == result["per_split"]["int8 sites"]
    assert result["drop"]["int8 sites"]["mean"] == 0.0
    assert result["drop"]["mixed"]["mean"] == 0.0 and result["f1"]["fp32"]["n"] == 3


def test_embeddings_that_lost_the_signal_show_a_drop_whose_interval_excludes_zero():
    x, labels, groups = _separable()
    noise = np.random.default_rng(1).standard_normal(x.shape).astype(np.float32)
    result = multi_split_drop(x, noise, labels, groups, n_splits=4)
    drop = result["drop"]["int8 sites"]
    assert result["f1"]["fp32"]["mean"] > 0.9
    assert drop["mean"] > 0.3 and drop["excludes_zero"] and drop["wins"] == 4


def test_multi_split_drop_refuses_one_split_and_mismatched_inputs():
    x, labels, groups = _separable()
    with pytest.raises(ValueError, match=">= 2 splits"):
        multi_split_drop(x, x, labels, groups, n_splits=1)
    with pytest.raises(ValueError, match="labels for embeddings"):
        multi_split_drop(x, x[:, :8], labels, groups)
    with pytest.raises(ValueError, match="labels for embeddings"):
        multi_split_drop(x, x, labels[:-1], groups)
