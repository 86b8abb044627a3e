"""Keeping the best global version by federated validation: the pure rule."""

from __future__ import annotations

import numpy as np
import pytest

from ftlct.cloud.model_selection import (
    BestVersion,
    Candidate,
    federated_validation_score,
    weighted_validation_score,
)


def test_federated_score_is_the_macro_f1_of_the_summed_matrices():
    # site a saw only class 0, site b only class 1: each alone is a one-class matrix
    a = np.array([[8, 2], [0, 0]])
    b = np.array([[0, 0], [3, 7]])
    # summed: tp0 8, fp0 3, fn0 2 -> f1 16/21; tp1 7, fp1 2, fn1 3 -> f1 14/19
    assert federated_validation_score([a, b]) == pytest.approx((16 / 21 + 14 / 19) / 2)


def test_federated_score_refuses_mismatched_or_missing_matrices():
    with pytest.raises(ValueError, match="no site"):
        federated_validation_score([])
    with pytest.raises(ValueError, match="shapes"):
        federated_validation_score([np.zeros((2, 2)), np.zeros((3, 3))])
    with pytest.raises(ValueError, match="negative"):
        federated_validation_score([np.array([[1, -1], [0, 1]])])


def test_weighted_score_weights_sites_by_their_held_out_counts():
    assert weighted_validation_score([0.5, 1.0], [30, 10]) == pytest.approx(0.625)
    with pytest.raises(ValueError):
        weighted_validation_score([0.5], [0])


def test_best_version_only_moves_on_a_strict_improvement():
    best = BestVersion()
    for round_, score in enumerate([0.70, 0.75, 0.75, 0.72, 0.80, 0.79], start=1):
        best = best.offer(Candidate(f"r{round_}", round_, score))
        if round_ == 3:
            assert best.best.version == "r2"  # a tie keeps the earlier version
        if round_ == 4:
            assert best.best.version == "r2"  # a worse round never replaces it
    assert best.best == Candidate("r5", 5, 0.80)
    with pytest.raises(ValueError, match="not finite"):
        best.offer(Candidate("r7", 7, float("nan")))
