"""What each method trains, behind one small interface the round loop drives.

A learner turns (weights, a site's training arrays) into a local result with
the shared trainer (``ftlct.agent.training.local_training``) and predicts
classes for test arrays. The round loop does not know whether the weights are
a head, a head plus the last backbone block, or a whole CNN.
"""

from __future__ import annotations

import dataclasses
import hashlib
from abc import ABC, abstractmethod

import numpy as np
import torch

from ftlct.agent.training.local_training import (
    ArrayDataset,
    LocalTrainConfig,
    ModuleTrainResult,
    Weights,
    load_state_arrays,
    predict_logits,
    train_head,
    train_module,
)
from ftlct.bench.models import SmallCnn, small_cnn_weights, suffix_network
from ftlct.export.head_onnx import numpy_head_logits


def round_seed(seed: int, round_: int, site: int) -> int:
    """A seed per (run, round, site): rounds differ, reruns repeat."""
    digest = hashlib.sha256(f"{seed}/{round_}/{site}".encode()).digest()
    return int.from_bytes(digest[:4], "big")


class Learner(ABC):
    """Trains and scores one kind of federated weights."""

    kind: str  # the view kind it reads: "embedding", "prefix{stage}" or "input"

    def __init__(self, config: LocalTrainConfig, n_classes: int):
        self.config = config
        self.n_classes = n_classes

    @abstractmethod
    def initial(self) -> Weights:
        """The weights every site starts from in round 1."""

    @abstractmethod
    def train(self, weights: Weights, data: ArrayDataset, seed: int) -> ModuleTrainResult:
        """One local round from ``weights``; ``result.state`` holds the new weights."""

    @abstractmethod
    def predict(self, weights: Weights, inputs: np.ndarray) -> np.ndarray:
        """Predicted class indices ``[N]``."""

    def _config(self, seed: int) -> LocalTrainConfig:
        return dataclasses.replace(self.config, seed=seed)


class HeadLearner(Learner):
    """FTL as the agent runs it: a head over frozen ``backbone.onnx`` embeddings."""

    kind = "embedding"

    def __init__(self, config: LocalTrainConfig, n_classes: int, head: Weights):
        super().__init__(config, n_classes)
        self.head = head

    def initial(self) -> Weights:
        return {k: np.array(v, dtype=np.float32) for k, v in self.head.items()}

    def train(
        self, weights: Weights, data: ArrayDataset, seed: int, standardise=None
    ) -> ModuleTrainResult:
        """``standardise``: the federation's ``(mean, std)`` (a standardised FTL federation)."""
        result = train_head(
            weights, data.inputs, data.labels, self.n_classes, self._config(seed), standardise
        )
        return ModuleTrainResult(result.weights, result.n_samples, result.metrics)

    def predict(self, weights: Weights, inputs: np.ndarray) -> np.ndarray:
        return numpy_head_logits(weights, inputs).argmax(axis=1)


class FinetuneLearner(Learner):
    """FedAvg/CFL from the ImageNet backbone: its stages from ``first`` on and a head.

    Reads cached outputs of the frozen stages before ``first``; ``data`` holds
    ``views`` blocks of the same images (the site's scanner, then jittered
    copies), and each round trains on one view per image, drawn from the seed.
    """

    def __init__(
        self,
        config: LocalTrainConfig,
        n_classes: int,
        head: Weights,
        frozen: Weights,
        first: int,
        views: int = 1,
    ):
        super().__init__(config, n_classes)
        self.kind = f"prefix{first}"
        self.head = head
        self.frozen = frozen  # features.{first..}.* from backbone.safetensors
        self.first = first
        self.views = views
        self._module = None  # built once (MobileNetV2's constructor is slow), reloaded per use

    def _network(self, weights: Weights):
        if self._module is None:
            self._module = suffix_network(
                self.first, self.frozen, weights, self.config.head_dropout
            )
        else:  # every tensor is overwritten: the frozen stages, then the federated ones
            load_state_arrays(self._module, self.frozen)
            load_state_arrays(self._module, weights)
        return self._module

    def initial(self) -> Weights:
        from ftlct.bench.models import suffix_trainable

        weights = {**suffix_trainable(self.frozen), **self.head}
        return {k: np.array(v, dtype=np.float32) for k, v in weights.items()}

    def train(self, weights: Weights, data: ArrayDataset, seed: int) -> ModuleTrainResult:
        module = self._network(weights)
        n = len(data) // self.views
        drawn = np.random.default_rng(seed).integers(0, self.views, n) * n + np.arange(n)
        subset = ArrayDataset(data.inputs[np.sort(drawn)], data.labels[np.sort(drawn)])
        return train_module(module, weights, subset, self._config(seed), self.n_classes)

    def predict(self, weights: Weights, inputs: np.ndarray) -> np.ndarray:
        return predict_logits(self._network(weights), inputs, batch_size=256).argmax(axis=1)


class NetworkLearner(Learner):
    """Conventional FL: the whole ``SmallCnn`` from a common random initialisation."""

    kind = "input"

    def __init__(self, config: LocalTrainConfig, n_classes: int, seed: int):
        super().__init__(config, n_classes)
        self.seed = seed

    def initial(self) -> Weights:
        return small_cnn_weights(self.n_classes, self.seed)

    def _module(self, weights: Weights) -> SmallCnn:
        with torch.random.fork_rng(devices=[]):
            module = SmallCnn(self.n_classes)
        load_state_arrays(module, weights)
        return module

    def train(self, weights: Weights, data: ArrayDataset, seed: int) -> ModuleTrainResult:
        return train_module(
            self._module(weights), weights, data, self._config(seed), self.n_classes
        )

    def predict(self, weights: Weights, inputs: np.ndarray) -> np.ndarray:
        return predict_logits(self._module(weights), inputs, batch_size=64).argmax(axis=1)


def warm_up(n_classes: int) -> None:
    """One throw-away step of each trainer, so no method's timing pays torch's first-call set-up."""
    from ftlct.export.heads import head_to_arrays, make_head

    config = LocalTrainConfig(epochs=1, val_fraction=0.0)
    rng = np.random.default_rng(0)
    labels = np.arange(4) % n_classes
    with torch.random.fork_rng(devices=[]):
        head = head_to_arrays(make_head("linear", n_classes))
    train_head(
        head,
        rng.random((4, head["dense.0.weight"].shape[1]), np.float32),
        labels,
        n_classes,
        config,
    )
    NetworkLearner(config, n_classes, 0).train(
        small_cnn_weights(n_classes, 0),
        ArrayDataset(rng.random((4, 3, 32, 32), np.float32), labels),
        0,
    )
