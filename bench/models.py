"""The networks the benchmark trains (torch; bench only, never on the edge inference path).

- ``SmallCnn``: the whole-network model of the ``fedavg`` and ``cfl`` baselines,
  trained from random initialisation. MobileNetV2 would be the like-for-like
  choice, but training it costs ~165 ms per 224 px image on the 2-core test
  machine (~100 s per pass over 600 images, hours for a run), so the baselines
  use four conv-BN-ReLU-maxpool blocks (16-32-64-128 channels, ~100k
  parameters, ~6 ms per image) on the same 224 px inputs.
- ``SuffixNetwork``: the ``fedavg`` / ``cfl`` baselines that fine-tune the
  ImageNet MobileNetV2 from stage ``first`` (default ``features.17``, the
  last inverted residual block, and ``features.18``, the 1x1 conv to 1280)
  plus a head on the mean-pooled ``features.18`` output, over cached
  outputs of the frozen stages before it; the federated tensors are those
  stages' weights and the head. Batch norm keeps the ImageNet statistics
  (eval mode): site batches of a few non-IID images would make poor running
  statistics.
"""

from __future__ import annotations

import torch
from torch import nn

from ftlct.agent.training.local_training import Weights, load_state_arrays, state_arrays
from ftlct.export.heads import Head, head_from_arrays
from ftlct.export.mobilenet_v2 import MobileNetV2


class SmallCnn(nn.Module):
    def __init__(self, n_classes: int, channels: tuple[int, ...] = (16, 32, 64, 128)):
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        for index, c_out in enumerate(channels):
            layers += [
                nn.Conv2d(c_in, c_out, 3, stride=2 if index == 0 else 1, padding=1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]
            c_in = c_out
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(c_in, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(
            torch.flatten(nn.functional.adaptive_avg_pool2d(self.features(x), 1), 1)
        )


def small_cnn_weights(n_classes: int, seed: int) -> Weights:
    """The common random initialisation every site of a run starts from."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return state_arrays(SmallCnn(n_classes))


class SuffixNetwork(nn.Module):
    """Output of stage ``first - 1`` ``[N, C, h, w]`` -> stages ``first``.. -> mean pool -> head."""

    def __init__(self, stages: dict[str, nn.Module], head: Head):
        super().__init__()
        self.features = nn.ModuleDict(stages)  # keys are stage numbers: tensors keep their names
        self.dense = head.dense
        self.dropout = head.dropout

    def train(self, mode: bool = True) -> SuffixNetwork:
        super().train(mode)
        for module in self.features.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self.features.values():
            x = stage(x)
        x = torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)
        for index, layer in enumerate(self.dense):
            if index:
                x = nn.functional.dropout(torch.relu(x), self.dropout, self.training)
            x = layer(x)
        return x


def suffix_network(
    first: int, frozen: Weights, weights: Weights, dropout: float = 0.0
) -> SuffixNetwork:
    """A ``SuffixNetwork`` from MobileNetV2 stage ``first`` on: ``frozen`` (those stages' tensors
    from ``backbone.safetensors``, BN statistics included) overlaid with the federated ``weights``
    (trainable stage tensors and ``dense.*``)."""
    head_arrays = {k: v for k, v in weights.items() if k.startswith("dense.")}
    with torch.random.fork_rng(devices=[]):  # layer constructors draw from the global RNG
        features = MobileNetV2().features
        module = SuffixNetwork(
            {str(i): features[i] for i in range(first, len(features))},
            head_from_arrays(head_arrays, dropout),
        )
    load_state_arrays(module, frozen)
    load_state_arrays(module, weights)
    return module


def suffix_frozen(backbone: Weights, first: int) -> Weights:
    """The backbone tensors of stages ``first``.. (``features.{i}.*``)."""
    return {
        k: v
        for k, v in backbone.items()
        if k.startswith("features.") and int(k.split(".")[1]) >= first
    }


def suffix_trainable(frozen: Weights) -> Weights:
    """The federated part of the stages: weights and BN affine, not BN running statistics."""
    return {
        k: v
        for k, v in frozen.items()
        if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))
    }
