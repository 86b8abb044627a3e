"""MobileNetV2 (Sandler et al. 2018) written for ftl-ct, with torchvision's state-dict keys.

torchvision itself does not import beside the project's torch build, so the
module is written here; the key layout matches torchvision's so that its
ImageNet weights load with ``strict=True``. Imports torch: training and export only.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from ftlct.export.files import sha256_file

EMBEDDING_DIM = 1280
IMAGENET_WEIGHTS_SHA256 = "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889"
IMAGENET_WEIGHTS_NAME = "mobilenet_v2-imagenet-b0353104.pth"

# expansion t, output channels c, repeats n, first stride s (the paper's Table 2)
_INVERTED_RESIDUAL_SETTING = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


class WeightsError(ValueError):
    """The weights file is missing, is not the expected one, or does not fit the network."""


class ConvBNReLU(nn.Sequential):
    def __init__(self, c_in: int, c_out: int, kernel: int = 3, stride: int = 1, groups: int = 1):
        super().__init__(
            nn.Conv2d(c_in, c_out, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU6(inplace=True),
        )


class InvertedResidual(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, expand_ratio: int):
        super().__init__()
        hidden = c_in * expand_ratio
        self.use_residual = stride == 1 and c_in == c_out
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBNReLU(c_in, hidden, kernel=1))
        layers += [
            ConvBNReLU(hidden, hidden, stride=stride, groups=hidden),
            nn.Conv2d(hidden, c_out, 1, bias=False),
            nn.BatchNorm2d(c_out),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_residual else self.conv(x)


class MobileNetV2(nn.Module):
    """Width multiplier 1.0, as torchvision's ``mobilenet_v2``."""

    def __init__(self, num_classes: int = 1000, dropout: float = 0.2):
        super().__init__()
        channels = 32
        features: list[nn.Module] = [ConvBNReLU(3, channels, stride=2)]
        for t, c, n, s in _INVERTED_RESIDUAL_SETTING:
            for i in range(n):
                features.append(InvertedResidual(channels, c, s if i == 0 else 1, t))
                channels = c
        features.append(ConvBNReLU(channels, EMBEDDING_DIM, kernel=1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(EMBEDDING_DIM, num_classes))
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Global-average-pooled features: ``[N, 1280]``."""
        return torch.flatten(nn.functional.adaptive_avg_pool2d(self.features(x), 1), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))


class Backbone(nn.Module):
    """The feature extractor that becomes ``backbone.onnx``: image -> embedding."""

    def __init__(self, features: nn.Sequential):
        super().__init__()
        self.features = features

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return torch.flatten(nn.functional.adaptive_avg_pool2d(self.features(image), 1), 1)


def load_state_dict_file(path: str | os.PathLike, expected_sha256: str | None) -> dict:
    """Read a ``.pth`` state dict, checking its sha256 first when one is given."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    if expected_sha256 is not None:
        actual = sha256_file(path)
        if actual != expected_sha256:
            raise WeightsError(
                f"weights file {path.name} has sha256 {actual[:12]}..., expected {expected_sha256[:12]}..."
            )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsError(f"weights file {path.name} is not a torch state dict: {exc}") from exc
    if not isinstance(state, dict):
        raise WeightsError(
            f"weights file {path.name} holds a {type(state).__name__}, not a state dict"
        )
    return state


def load_into(model: nn.Module, state: dict, what: str = "MobileNetV2") -> None:
    """``load_state_dict(strict=True)`` with a one-line error naming what does not fit."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if wrong:
            k = wrong[0]
            parts.append(
                f"{len(wrong)} of wrong shape (e.g. {k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)})"
            )
        raise WeightsError(f"state dict does not fit {what}: keys " + ", ".join(parts))
    model.load_state_dict(state, strict=True)


def imagenet_mobilenet_v2(
    weights: str | os.PathLike, expected_sha256: str | None = IMAGENET_WEIGHTS_SHA256
) -> MobileNetV2:
    """MobileNetV2 with torchvision's ImageNet weights, in eval mode."""
    model = MobileNetV2()
    load_into(model, load_state_dict_file(weights, expected_sha256))
    return model.eval()


def backbone_state(model: MobileNetV2 | Backbone) -> dict[str, torch.Tensor]:
    """The backbone's tensors (``features.*``), as stored in ``backbone.safetensors``."""
    return {k: v for k, v in model.state_dict().items() if k.startswith("features.")}


def backbone_from_state(state: dict) -> Backbone:
    """Rebuild the backbone from ``features.*`` tensors, in eval mode."""
    backbone = Backbone(MobileNetV2().features)
    load_into(backbone, state, what="the MobileNetV2 backbone")
    return backbone.eval()
