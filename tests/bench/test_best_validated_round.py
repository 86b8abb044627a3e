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


def test_a_standardised_ftl_run_spends_its_first_round_on_moments_then_trains_standardised():
    from ftlct.agent.training.local_training import LocalTrainConfig
    from ftlct.bench.learners import HeadLearner
    from ftlct.export.feature_moments import site_moments

    rng = np.random.default_rng(0)

    def draw(n):
        y = rng.integers(0, 2, n)
        return (rng.normal(0, 1, (n, 6)) + 5.0 + 2.0 * y[:, None]).astype(np.float32), y

    test_x, test_y = draw(60)
    sites, seen = [SiteData(f"s{i}", ArrayDataset(*draw(40)), test_x) for i in range(2)], []

    class Recording(HeadLearner):
        def train(self, weights, data, seed, standardise=None):
            seen.append(standardise)
            return super().train(weights, data, seed, standardise)

    head = {"dense.0.weight": np.zeros((2, 6), np.float32), "dense.0.bias": np.zeros(2, np.float32)}
    run = run_federated(
        "ftl",
        Recording(LocalTrainConfig(epochs=10, lr=0.05, val_fraction=0.0), 2, head),
        InProcessTransport(make_strategy("ftl", standardise=True)),
        sites,
        test_y,
        rounds=3,
        seed=0,
    )
    assert len(seen) == 4  # round 1: moments from both sites, no training
    pooled = np.concatenate([s.train.inputs for s in sites])
    mean, std = site_moments(pooled).mean_std()
    np.testing.assert_allclose(seen[0][0], mean, rtol=1e-5)
    np.testing.assert_allclose(seen[0][1], std, rtol=1e-5)
    assert run.history[0].update_norms == ()  # the moments round moves no head
    assert run.history[0].f1 < run.history[-1].f1 and run.history[-1].accuracy > 0.9
    assert run.extra["moments_bytes_up"] > 0 and run.bytes_up_per_round > 0
