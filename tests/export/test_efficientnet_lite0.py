"""EfficientNet-Lite0: the weights load strictly, and padding and input scaling fit them.

The checks use natural photographs that ship with matplotlib (Grace Hopper in
uniform, a gift box): an ImageNet network with the right padding and input
scaling names them confidently, and the statistics its first batch norm sees
match the running statistics the weights were trained with.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
import pytest
import torch
from PIL import Image

from ftlct.export.efficientnet_lite0 import SameConv2d, imagenet_efficientnet_lite0
from ftlct.export.mobilenet_v2 import WeightsError
from ftlct.export.preprocessing import IMAGENET_MEAN, IMAGENET_STD

SAMPLES = Path(matplotlib.__file__).parent / "mpl-data" / "sample_data"
MILITARY_UNIFORM = 652  # ImageNet class index


def photo(name: str) -> torch.Tensor:
    """A centre crop at 224 px, channels in [0, 1]: ``[1, 3, 224, 224]``."""
    with Image.open(SAMPLES / name) as image:
        image = image.convert("RGB")
        side = min(image.size)
        left, top = (image.size[0] - side) // 2, (image.size[1] - side) // 2
        image = image.crop((left, top, left + side, top + side)).resize((224, 224))
        pixels = np.asarray(image, np.float32) / 255.0
    return torch.from_numpy(pixels).permute(2, 0, 1)[None]


def tf_scaling(x: torch.Tensor) -> torch.Tensor:
    return (x * 255.0 - 127.0) / 128.0


def imagenet_scaling(x: torch.Tensor) -> torch.Tensor:
    return (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(
        1, 3, 1, 1
    )


@pytest.fixture(scope="module")
def lite0(lite0_weights):
    return imagenet_efficientnet_lite0(lite0_weights)


def test_weights_load_strictly_and_grace_hopper_is_a_military_uniform(lite0):
    with torch.no_grad():
        probabilities = lite0(tf_scaling(photo("grace_hopper.jpg"))).softmax(1)[0]
    assert int(probabilities.argmax()) == MILITARY_UNIFORM
    assert float(probabilities.max()) > 0.2
    assert sum(p.numel() for p in lite0.parameters()) == pytest.approx(4.65e6, rel=0.01)


def test_tf_same_padding_is_more_confident_than_symmetric_padding(lite0, monkeypatch):
    images = torch.cat([photo("grace_hopper.jpg"), photo("logo2.png")])
    with torch.no_grad():
        same = lite0(tf_scaling(images)).softmax(1).amax(1)

    def symmetric(self, x):
        padding = tuple(k // 2 for k in self.kernel_size)
        return torch.nn.functional.conv2d(
            x, self.weight, None, self.stride, padding, 1, self.groups
        )

    monkeypatch.setattr(SameConv2d, "forward", symmetric)
    with torch.no_grad():
        other = lite0(tf_scaling(images)).softmax(1).amax(1)
    assert bool((same > other).all()), (same, other)


def test_input_scaling_matches_the_first_batch_norm_statistics(lite0):
    images = torch.cat([photo("grace_hopper.jpg"), photo("Minduka_Present_Blue_Pack.png")])
    bn = lite0._bn0
    live = bn.running_var > 1e-4  # a few stem channels are dead

    def mismatch(scaled: torch.Tensor) -> float:
        with torch.no_grad():
            z = lite0._conv_stem(scaled)
        ratio = z.var(dim=(0, 2, 3))[live] / bn.running_var[live]
        return float(ratio.log().abs().mean())

    assert mismatch(tf_scaling(images)) < 0.5 * mismatch(imagenet_scaling(images))


def test_wrong_file_is_refused_with_its_hash(tmp_path, imagenet_weights):
    with pytest.raises(WeightsError, match="sha256"):
        imagenet_efficientnet_lite0(imagenet_weights)
