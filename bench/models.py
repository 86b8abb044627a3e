"""The networks the benchmark trains (torch; bench only, never on the edge inference path).

- ``SmallCnn``: the whole-network model of the ``fedavg`` and ``cfl`` baselines,
  trained from random initialisation. MobileNetV2 would be the like-for-like
  choice, but training it costs ~165 ms per 224 px image on the 2-core test
  machine (~100 s per pass over 600 images, hours for a run), so the baselines
  use four conv-BN-ReLU-maxpool blocks (16-32-64-128 channels, ~100k
  parameters, ~6 ms per image) on the same 224 px inputs.
- ``LastBlockHead``: the FTL variant that also fine-tunes MobileNetV2's last
  block (``features.18``: 1x1 conv 320 -> 1280, BN, ReLU6) on cached
  ``features.17`` outputs; the federated tensors are that block and the head.
  Its BatchNorm keeps the ImageNet statistics (eval mode): site batches of a
  few non-IID images would make poor running statistics.
"""

from __future__ import annotations

import torch
from torch import nn

from ftlct.agent.training.local_training import Weights, load_state_arrays, state_arrays
from ftlct.export.heads import Head, head_from_arrays
from ftlct.export.mobilenet_v2 import EMBEDDING_DIM, ConvBNReLU

LAST_BLOCK = "18"
LAST_BLOCK_IN = 320


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


class LastBlockHead(nn.Module):
    """``features.17`` output ``[N, 320, h, w]`` -> ``features.18`` -> average pool -> head."""

    def __init__(self, block: nn.Module, head: Head):
        super().__init__()
        self.features = nn.ModuleDict({LAST_BLOCK: block})
        self.dense = head.dense
        self.dropout = head.dropout

    def train(self, mode: bool = True) -> LastBlockHead:
        super().train(mode)
        for module in self.features.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(nn.functional.adaptive_avg_pool2d(self.features[LAST_BLOCK](x), 1), 1)
        for index, layer in enumerate(self.dense):
            if index:
                x = nn.functional.dropout(torch.relu(x), self.dropout, self.training)
            x = layer(x)
        return x


def last_block_module(frozen: Weights, weights: Weights, dropout: float = 0.0) -> LastBlockHead:
    """A ``LastBlockHead``: ``frozen`` (the backbone's ``features.18.*``, BN statistics included)
    overlaid with the federated ``weights`` (trainable ``features.18.*`` and ``dense.*``)."""
    head_arrays = {k: v for k, v in weights.items() if k.startswith("dense.")}
    with torch.random.fork_rng(devices=[]):  # layer constructors draw from the global RNG
        module = LastBlockHead(
            ConvBNReLU(LAST_BLOCK_IN, EMBEDDING_DIM, kernel=1),
            head_from_arrays(head_arrays, dropout),
        )
    load_state_arrays(module, frozen)
    load_state_arrays(module, weights)
    return module


def last_block_trainable(frozen: Weights) -> Weights:
    """The federated part of the block: conv weight and BN affine, not BN running statistics."""
    prefix = f"features.{LAST_BLOCK}."
    return {
        k: v
        for k, v in frozen.items()
        if k.startswith(prefix)
        and not k.endswith(("running_mean", "running_var", "num_batches_tracked"))
    }
