"""The series rule: the k most suspicious slices decide; a few abnormal slices are not drowned."""

import numpy as np
import pytest

from ftlct.agent.inference.aggregation import aggregate

LABELS = ["normal", "abnormal"]


def slices(p_abnormal):
    p = np.asarray(p_abnormal, dtype=np.float64)
    return np.stack([1 - p, p], axis=1)


def test_a_finding_on_five_of_two_hundred_slices_makes_the_series_abnormal():
    p = [0.05] * 195 + [0.95] * 5
    top_k = aggregate(slices(p), LABELS, "top_k_mean", top_k=5)
    mean = aggregate(slices(p), LABELS, "mean")
    assert top_k.label == "abnormal"
    assert top_k.probabilities["abnormal"] == pytest.approx(0.95)
    assert sorted(top_k.key_slices) == [195, 196, 197, 198, 199]
    assert mean.label == "normal"  # the mean would have missed it


def test_one_noisy_slice_does_not_flip_a_normal_series():
    p = [0.05] * 199 + [0.99]
    score = aggregate(slices(p), LABELS, "top_k_mean", top_k=5)
    assert score.label == "normal"
    assert score.probabilities["abnormal"] == pytest.approx((0.99 + 4 * 0.05) / 5)


def test_fewer_slices_than_k_and_a_single_picture():
    assert aggregate(slices([0.7]), LABELS).probabilities["abnormal"] == pytest.approx(0.7)
    two = aggregate(slices([0.2, 0.6]), LABELS, top_k=5)
    assert two.probabilities["abnormal"] == pytest.approx(0.4)
    assert two.rule == "top_k_mean(k=2, negative=normal)"


def test_without_a_negative_label_the_rule_falls_back_to_the_mean():
    probs = np.array([[0.6, 0.3, 0.1], [0.2, 0.7, 0.1]])
    score = aggregate(probs, ["covid", "noncovid", "other"], "top_k_mean", top_k=1)
    assert score.rule == "mean"
    assert score.label == "noncovid"
    assert score.probabilities["covid"] == pytest.approx(0.4)
    assert score.key_slices == [1]


def test_probabilities_stay_a_distribution():
    rng = np.random.default_rng(0)
    raw = rng.random((50, 4))
    probs = raw / raw.sum(axis=1, keepdims=True)
    score = aggregate(probs, ["normal", "cyst", "stone", "tumor"], top_k=7)
    assert sum(score.probabilities.values()) == pytest.approx(1.0)


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError):
        aggregate(np.zeros((0, 2)), LABELS)
    with pytest.raises(ValueError):
        aggregate(np.zeros((3, 3)), LABELS)
