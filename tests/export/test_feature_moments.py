"""Feature moments: sums that add up to the fleet's mean and std, a wire form that refuses what
does not fit, and the head maps between raw and standardised embeddings."""

from __future__ import annotations

import numpy as np
import pytest

from ftlct.export.closed_form_head import sensitivity
from ftlct.export.feature_moments import (
    COUNT,
    SUM,
    SUM_SQ,
    FeatureMoments,
    MomentsError,
    check_standardisation,
    privatise_moments,
    raw_head,
    site_moments,
    standardise,
    standardised_head,
)
from ftlct.export.head_onnx import numpy_head_logits


def embeddings(seed: int, n: int, dim: int = 6) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.normal(3.0, 2.0, (n, dim)) * rng.uniform(0.1, 5.0, dim)).astype(np.float32)


def test_the_sites_moments_add_up_to_the_mean_and_std_of_their_slices_pooled():
    a, b = embeddings(1, 30), embeddings(2, 50)
    mean, std = (site_moments(a) + site_moments(b)).mean_std()
    pooled = np.concatenate([a, b]).astype(np.float64)
    np.testing.assert_allclose(mean, pooled.mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(std, pooled.std(axis=0), rtol=1e-4)


def test_each_embedding_is_clipped_to_the_bound_before_it_is_summed():
    x = embeddings(3, 20)
    moments = site_moments(x, clip_norm=1.0)
    assert moments.total_sq.sum() <= 20 * 1.0 + 1e-6  # every slice's squared norm <= 1
    assert moments.count == 20


def test_a_constant_dimension_gets_a_floored_std_not_zero():
    x = embeddings(4, 40)
    x[:, 2] = 7.0
    mean, std = site_moments(x).mean_std()
    assert mean[2] == pytest.approx(7.0) and 0 < std[2] < 1e-2 * np.median(std)


def test_moments_of_no_slice_give_no_mean():
    with pytest.raises(MomentsError, match="no mean"):
        FeatureMoments(np.zeros(3), np.zeros(3), 0.0).mean_std()


def test_the_wire_form_round_trips_and_refuses_names_shapes_and_non_finite_values():
    moments = site_moments(embeddings(5, 10))
    back = FeatureMoments.from_arrays(moments.to_arrays())
    np.testing.assert_allclose(back.total, moments.total, rtol=1e-6)
    assert back.count == 10
    arrays = moments.to_arrays()
    with pytest.raises(MomentsError, match="moments need tensors"):
        FeatureMoments.from_arrays({k: v for k, v in arrays.items() if k != COUNT})
    with pytest.raises(MomentsError, match="do not fit"):
        FeatureMoments.from_arrays({**arrays, SUM_SQ: arrays[SUM_SQ][:-1]})
    with pytest.raises(MomentsError, match="do not fit"):
        FeatureMoments.from_arrays({**arrays, COUNT: np.array([1.0, 2.0], np.float32)})
    bad = arrays[SUM].copy()
    bad[0] = np.nan
    with pytest.raises(MomentsError, match="non-finite"):
        FeatureMoments.from_arrays({**arrays, SUM: bad})
    with pytest.raises(MomentsError, match="cannot add"):
        moments + site_moments(embeddings(6, 10, dim=4))


def test_dp_noise_has_the_statistics_sensitivity_and_needs_positive_parameters():
    moments = site_moments(embeddings(7, 10, dim=2000), clip_norm=1.0)
    noised = privatise_moments(moments, 1.0, 0.5, np.random.default_rng(0))
    noise = noised.total - moments.total
    assert noise.std() == pytest.approx(0.5 * sensitivity(1.0), rel=0.1)
    with pytest.raises(ValueError, match="must be > 0"):
        privatise_moments(moments, 0.0, 0.5, np.random.default_rng(0))


def test_the_standardised_head_is_the_same_function_and_raw_head_undoes_it():
    rng = np.random.default_rng(8)
    head = {
        "dense.0.weight": rng.normal(0, 1, (5, 6)).astype(np.float32),
        "dense.0.bias": rng.normal(0, 1, 5).astype(np.float32),
        "dense.1.weight": rng.normal(0, 1, (2, 5)).astype(np.float32),
        "dense.1.bias": rng.normal(0, 1, 2).astype(np.float32),
    }
    x = embeddings(9, 12)
    mean, std = site_moments(x).mean_std()
    inner = standardised_head(head, mean, std)
    np.testing.assert_allclose(
        numpy_head_logits(inner, standardise(x, mean, std)),
        numpy_head_logits(head, x),
        rtol=1e-4,
        atol=1e-3,
    )
    for name, value in raw_head(inner, mean, std).items():
        np.testing.assert_allclose(value, head[name], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(inner["dense.1.weight"], head["dense.1.weight"])


@pytest.mark.parametrize(
    "mean, std, named",
    [
        (np.zeros(5), np.ones(6), "shapes"),
        (np.zeros(6), np.r_[np.ones(5), 0.0], "positive finite"),
        (np.r_[np.zeros(5), np.inf], np.ones(6), "positive finite"),
    ],
)
def test_a_standardisation_that_does_not_fit_the_head_is_refused(mean, std, named):
    with pytest.raises(MomentsError, match=named):
        check_standardisation(mean, std, 6)
    head = {"dense.0.weight": np.zeros((2, 6), np.float32), "dense.0.bias": np.zeros(2)}
    with pytest.raises(MomentsError, match=named):
        standardised_head(head, mean, std)
    with pytest.raises(MomentsError, match="first layer"):
        standardised_head({"dense.1.weight": np.zeros((2, 6))}, np.zeros(6), np.ones(6))
