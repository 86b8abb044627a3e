"""Keeping the best global version by federated validation: the pure rule and the round loop."""

from __future__ import annotations

import numpy as np
import pytest

from ftlct.agent.training.local_training import ArrayDataset, ModuleTrainResult
from ftlct.bench.federation import SiteData, run_federated
from ftlct.bench.inproc_transport import InProcessTransport
from ftlct.bench.learners import Learner
from ftlct.bench.selection import (
    BestVersion,
    Candidate,
    federated_validation_score,
    weighted_validation_score,
)
from ftlct.cloud.strategies import make_strategy


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


class DriftingLearner(Learner):
    """Weights are one number w; the model predicts class 1 iff w > 0.5; sites push w up by 0.3."""

    kind = "embedding"

    def initial(self):
        return {"w": np.zeros(1, np.float32)}

    def train(self, weights, data, seed):
        return ModuleTrainResult({"w": weights["w"] + 0.3}, len(data), {})

    def predict(self, weights, inputs):
        return np.full(len(inputs), int(weights["w"][0] > 0.5))


def test_the_round_loop_reports_the_validated_best_beside_the_last(tmp_path):
    from ftlct.agent.training.local_training import LocalTrainConfig

    x = np.zeros((4, 1), np.float32)
    # held-out and test images are all class 0: rounds 1 (w 0.3) is right, later rounds are wrong
    site = SiteData(
        "s", ArrayDataset(x, np.zeros(4, np.int64)), x, val=ArrayDataset(x, np.zeros(4, np.int64))
    )
    run = run_federated(
        "toy",
        DriftingLearner(LocalTrainConfig(), 2),
        InProcessTransport(make_strategy("fedavg")),
        [site],
        np.zeros(4, np.int64),
        rounds=4,
        seed=0,
    )
    assert run.final.accuracy == 0.0  # w = 1.2 after 4 rounds: predicts class 1
    assert run.best_round == 1 and run.best_validated.accuracy == 1.0
    assert [h.validation_f1 for h in run.history] == [1.0, 0.0, 0.0, 0.0]
