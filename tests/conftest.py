"""Suite-wide fixtures: the ImageNet weights and a built model directory (built once per run)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def imagenet_weights():
    """The torchvision ImageNet MobileNetV2 file: ../shared/weights, or the cache `make model` fills."""
    from ftlct.export.weights import candidate_paths, find_weights

    found = find_weights()
    if found is None:
        pytest.skip(
            f"no ImageNet weights in {', '.join(map(str, candidate_paths()))}; run `make model`"
        )
    return found


@pytest.fixture(scope="session")
def lite0_weights():
    """The EfficientNet-Lite0 ImageNet file: ../shared/weights or the fetch-weights cache."""
    from ftlct.export.weights import candidate_paths, find_weights

    found = find_weights("efficientnet_lite0")
    if found is None:
        where = ", ".join(map(str, candidate_paths("efficientnet_lite0")))
        pytest.skip(
            f"no EfficientNet-Lite0 weights in {where}; "
            "run `ftl-export fetch-weights --backbone efficientnet_lite0`"
        )
    return found


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory, imagenet_weights):
    """A ``normal,abnormal`` model directory with an untrained linear head (a ``ModelDir``)."""
    from ftlct.export.build import build_model_dir

    return build_model_dir(
        tmp_path_factory.mktemp("model") / "m", imagenet_weights, ["normal", "abnormal"]
    )
