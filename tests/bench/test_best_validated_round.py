"""The experiment's round loop keeps the best validated round beside the last (cloud/model_selection.py)."""

from __future__ import annotations

import numpy as np

from ftlct.agent.training.local_training import ArrayDataset, ModuleTrainResult
from ftlct.bench.federation import SiteData, run_federated
from ftlct.bench.inproc_transport import InProcessTransport
from ftlct.bench.learners import Learner
from ftlct.cloud.strategies import make_strategy


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
