"""The shared trainer: what the agent's local round and every bench method run."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from ftlct.agent.training.local_training import (
    ArrayDataset,
    LocalTrainConfig,
    TrainingError,
    class_weights,
    local_prior_logits,
    split_validation,
    state_arrays,
    train_head,
    train_module,
)
from ftlct.export.head_onnx import head_onnx_bytes, numpy_head_logits
from ftlct.export.heads import head_to_arrays, make_head

DIM = 1280


def blobs(n: int = 160, seed: int = 0, shift: float = 2.0, minority: float = 0.5):
    """Two Gaussian classes in embedding space (256 informative dimensions), class 1 a ``minority`` fraction."""
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < minority).astype(np.int64)
    x = (0.1 * rng.normal(size=(n, DIM))).astype(np.float32)
    x[:, :256] += shift * labels[:, None]
    return x, labels


def linear_head(n_classes: int = 2):
    return head_to_arrays(make_head("linear", n_classes))


FAST = LocalTrainConfig(epochs=8, lr=3e-3, batch_size=32, val_fraction=0.25)


def test_head_learns_and_reports_loss_and_validation():
    x, y = blobs()
    result = train_head(linear_head(), x, y, 2, FAST)
    assert result.metrics["train_loss"] < result.metrics["train_loss_first_epoch"]
    assert result.metrics["val_accuracy"] >= 0.9
    assert result.metrics["val_f1"] >= 0.9
    assert result.n_samples == result.metrics["n_train"] == 120
    assert result.metrics["n_val"] == 40


def test_weights_are_dense_layers_and_delta_is_local_minus_global():
    x, y = blobs()
    start = head_to_arrays(make_head("mlp", 2, seed=3))
    result = train_head(start, x, y, 2, FAST)
    assert set(result.weights) == set(start) == set(result.delta)
    for name in start:
        np.testing.assert_allclose(result.delta[name], result.weights[name] - start[name])
        assert result.weights[name].dtype == np.float32
    assert any(np.abs(d).max() > 0 for d in result.delta.values())
    head_onnx_bytes(result.weights)  # the agent can turn them into head.onnx without torch
    assert numpy_head_logits(result.weights, x[:3]).shape == (3, 2)


def test_same_seed_same_weights_other_seed_other_weights():
    x, y = blobs()
    a = train_head(linear_head(), x, y, 2, FAST)
    b = train_head(linear_head(), x, y, 2, FAST)
    c = train_head(linear_head(), x, y, 2, LocalTrainConfig(**{**FAST.to_json(), "seed": 1}))
    for name in a.weights:
        np.testing.assert_array_equal(a.weights[name], b.weights[name])
    assert any(not np.array_equal(a.weights[k], c.weights[k]) for k in a.weights)


def test_callers_torch_rng_is_left_alone():
    x, y = blobs(40)
    start = linear_head()
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    train_head(start, x, y, 2, FAST)
    assert torch.equal(torch.rand(3), expected)


def test_fedprox_keeps_the_update_closer_to_the_global_model():
    x, y = blobs()
    config = LocalTrainConfig(epochs=10, lr=1e-2, val_fraction=0.0)
    free = train_head(linear_head(), x, y, 2, config)
    prox = train_head(
        linear_head(), x, y, 2, LocalTrainConfig(**{**config.to_json(), "fedprox_mu": 1.0})
    )

    def norm(delta):
        return float(np.sqrt(sum(np.sum(v.astype(np.float64) ** 2) for v in delta.values())))

    assert norm(prox.delta) < 0.8 * norm(free.delta)


@pytest.mark.parametrize("mode", ["balanced", "logit_adjusted"])
def test_prior_corrections_raise_minority_recall(mode):
    x, y = blobs(300, shift=0.05, minority=0.1)
    test_x, test_y = blobs(2000, seed=1, shift=0.05, minority=0.5)
    config = LocalTrainConfig(epochs=6, lr=3e-3, val_fraction=0.0, class_weighting="none")
    plain = train_head(linear_head(), x, y, 2, config)
    corrected = train_head(
        linear_head(), x, y, 2, LocalTrainConfig(**{**config.to_json(), "class_weighting": mode})
    )

    def minority_recall(weights):
        predicted = numpy_head_logits(weights, test_x).argmax(axis=1)
        return float(np.mean(predicted[test_y == 1] == 1))

    assert minority_recall(corrected.weights) > minority_recall(plain.weights)


def test_local_prior_logits_are_log_frequencies_and_absent_classes_are_ruled_out():
    prior = local_prior_logits(np.array([0, 0, 0, 1]), 3).numpy()
    np.testing.assert_allclose(prior[:2], np.log([0.75, 0.25]), rtol=1e-6)
    assert prior[2] < -1e3


def test_class_weights_are_balanced_and_zero_for_absent_classes():
    weights = class_weights(np.array([0, 0, 0, 1]), 3, "balanced")
    np.testing.assert_allclose(weights.numpy(), [4 / 6, 4 / 2, 0.0])
    assert class_weights(np.array([0, 1]), 2, "none") is None


def test_validation_split_is_stratified_and_keeps_a_training_sample_per_class():
    labels = np.array([0] * 10 + [1] * 5 + [2])
    train, val = split_validation(labels, 0.2, seed=0)
    assert sorted(np.concatenate([train, val]).tolist()) == list(range(len(labels)))
    assert np.bincount(labels[val], minlength=3).tolist() == [2, 1, 0]
    assert 2 in labels[train]
    assert len(split_validation(labels, 0.0, 0)[1]) == 0


def test_augment_hook_sees_every_training_batch():
    x, y = blobs(64)
    calls = []

    def augment(batch, generator):
        calls.append(len(batch))
        return batch + 0.01 * torch.randn(batch.shape, generator=generator)

    config = LocalTrainConfig(epochs=2, batch_size=16, val_fraction=0.0, augment=augment)
    train_head(linear_head(), x, y, 2, config)
    assert sum(calls) == 2 * 64


class TinyCnn(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(self.body(x).mean(dim=(2, 3)))


def test_train_module_returns_bn_statistics_and_skips_lone_batches():
    torch.manual_seed(0)
    model = TinyCnn()
    start = state_arrays(model)
    assert not any("num_batches_tracked" in k for k in start)
    rng = np.random.default_rng(0)
    images = rng.normal(size=(5, 1, 8, 8)).astype(np.float16)  # float16 inputs train as float32
    labels = np.array([0, 1, 0, 1, 1])
    config = LocalTrainConfig(epochs=2, batch_size=4, val_fraction=0.0)  # batches of 3 and 2
    result = train_module(model, start, ArrayDataset(images, labels), config, n_classes=2)
    assert set(result.state) == set(start)
    assert not np.array_equal(result.state["body.1.running_mean"], start["body.1.running_mean"])
    lone = train_module(
        TinyCnn(), start, ArrayDataset(images[:1], labels[:1]), config, n_classes=2
    )  # one sample: BatchNorm cannot train on it, the round changes nothing
    np.testing.assert_array_equal(lone.state["fc.weight"], start["fc.weight"])


def test_frozen_parameters_stay_fixed():
    torch.manual_seed(0)
    model = TinyCnn()
    model.body[0].requires_grad_(False)
    start = state_arrays(model)
    images = np.random.default_rng(1).normal(size=(12, 1, 8, 8)).astype(np.float32)
    result = train_module(
        model,
        start,
        ArrayDataset(images, np.arange(12) % 2),
        LocalTrainConfig(epochs=2, val_fraction=0.0),
    )
    np.testing.assert_array_equal(result.state["body.0.weight"], start["body.0.weight"])
    assert not np.array_equal(result.state["fc.weight"], start["fc.weight"])


@pytest.mark.parametrize(
    ("weights", "embeddings", "n_classes", "match"),
    [
        ({"dense.0.weight": np.zeros((2, DIM), np.float32)}, np.zeros((4, DIM)), 2, "unusable"),
        (None, np.zeros((4, 100)), 2, "do not fit"),
        (None, np.zeros((4, DIM)), 3, "classes"),
    ],
)
def test_unusable_inputs_are_refused(weights, embeddings, n_classes, match):
    with pytest.raises(TrainingError, match=match):
        train_head(weights or linear_head(), embeddings, np.array([0, 1, 0, 1]), n_classes, FAST)


def test_labels_outside_the_classes_and_empty_sets_are_refused():
    with pytest.raises(TrainingError, match="outside"):
        train_head(linear_head(), np.zeros((2, DIM)), np.array([0, 2]), 2, FAST)
    with pytest.raises(TrainingError, match="no training samples"):
        train_head(linear_head(), np.zeros((0, DIM)), np.zeros(0, np.int64), 2, FAST)
    with pytest.raises(TrainingError, match="labels"):
        ArrayDataset(np.zeros((3, 4)), np.array([0, 1]))


def test_weights_of_wrong_shape_or_name_do_not_load():
    model = TinyCnn()
    state = state_arrays(model)
    data = ArrayDataset(np.zeros((4, 1, 8, 8), np.float32), np.array([0, 1, 0, 1]))
    with pytest.raises(TrainingError, match="shape"):
        train_module(model, {**state, "fc.bias": np.zeros(3, np.float32)}, data, FAST)
    with pytest.raises(TrainingError, match="lacks"):
        train_module(model, {**state, "other.weight": np.zeros(1, np.float32)}, data, FAST)
    with pytest.raises(TrainingError, match="non-finite"):
        train_module(model, {**state, "fc.bias": np.array([np.nan, 0], np.float32)}, data, FAST)


@pytest.mark.parametrize(
    "settings",
    [
        {"epochs": -1},
        {"lr": 0},
        {"batch_size": 0},
        {"optimizer": "lbfgs"},
        {"class_weighting": "inverse"},
        {"val_fraction": 1.0},
        {"fedprox_mu": -0.1},
    ],
)
def test_bad_settings_are_refused(settings):
    with pytest.raises(ValueError):
        LocalTrainConfig(**settings)


def test_settings_round_trip_and_unknown_keys_fail():
    config = LocalTrainConfig(epochs=3, optimizer="sgd", fedprox_mu=0.01)
    assert LocalTrainConfig.from_json(config.to_json()) == config
    with pytest.raises(ValueError, match="unknown training settings: epoch"):
        LocalTrainConfig.from_json({"epoch": 3})


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw"])
def test_every_optimizer_trains(optimizer):
    x, y = blobs()
    config = LocalTrainConfig(epochs=5, lr=1e-2, optimizer=optimizer, val_fraction=0.25)
    assert train_head(linear_head(), x, y, 2, config).metrics["val_accuracy"] >= 0.85


def test_a_standardised_round_returns_a_raw_space_head_that_fits_the_raw_embeddings():
    x, y = blobs(n=120, seed=4)
    x = x * 10.0 + 30.0  # far from centred, as pooled activations are
    mean = x.mean(axis=0)
    std = x.std(axis=0) + 1e-3
    result = train_head(linear_head(), x, y, 2, FAST, standardise=(mean, std))
    for name, value in result.delta.items():
        np.testing.assert_allclose(value, result.weights[name] - linear_head()[name], atol=1e-6)
    assert (numpy_head_logits(result.weights, x).argmax(axis=1) == y).mean() > 0.95


def test_a_standardisation_that_does_not_fit_the_head_or_the_embeddings_is_a_training_error():
    x, y = blobs(n=40)
    with pytest.raises(TrainingError, match="standardisation of shapes"):
        train_head(linear_head(), x, y, 2, FAST, standardise=(np.zeros(8), np.ones(8)))
    with pytest.raises(TrainingError, match="do not fit a head"):
        train_head(linear_head(), x[:, :8], y, 2, FAST, standardise=(np.zeros(DIM), np.ones(DIM)))
