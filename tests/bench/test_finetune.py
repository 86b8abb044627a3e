"""The fine-tuned baselines: MobileNetV2's last stages and a head over cached prefix outputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from ftlct.agent.training.local_training import ArrayDataset, LocalTrainConfig
from ftlct.bench.learners import FinetuneLearner
from ftlct.bench.models import suffix_frozen, suffix_network
from ftlct.export.backbones import architecture, network_from_state, pooled_backbone_from_manifest
from ftlct.export.heads import head_to_arrays, make_head


@pytest.fixture(scope="module")
def backbone(model_dir):
    return load_file(str(model_dir.path / "backbone.safetensors"))


def learner(backbone, views=1):
    frozen = suffix_frozen(backbone, 17)
    head = head_to_arrays(make_head("linear", 2, 1280))
    return FinetuneLearner(
        LocalTrainConfig(epochs=2, lr=1e-2, val_fraction=0.0), 2, head, frozen, 17, views
    )


def test_the_suffix_is_the_imagenet_network_from_stage_17(backbone):
    """Before training, the suffix's features equal the full network's on the same prefix output."""
    net = network_from_state(
        architecture("mobilenet_v2"), {k: torch.from_numpy(v) for k, v in backbone.items()}
    )
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        prefix = net.features[:17](x)
        expected = net.features[17:](prefix).mean(dim=(2, 3))
    head = {
        "dense.0.weight": np.eye(2, 1280, dtype=np.float32),
        "dense.0.bias": np.zeros(2, np.float32),
    }
    module = suffix_network(17, suffix_frozen(backbone, 17), head).eval()
    with torch.no_grad():
        logits = module(prefix)
    assert torch.allclose(logits, expected[:, :2], atol=1e-4)


def test_training_moves_conv_weights_and_head_but_never_batch_norm_statistics(backbone):
    rng = np.random.default_rng(0)
    inputs = rng.standard_normal((12, 160, 2, 2)).astype(np.float32)
    labels = np.repeat([0, 1], 6)
    inputs[labels == 1] += 1.0
    fine = learner(backbone)
    start = fine.initial()
    assert not any(k.endswith(("running_mean", "running_var")) for k in start)
    result = fine.train(start, ArrayDataset(inputs, labels), seed=1)
    assert set(result.state) == set(start)
    moved = [k for k in start if not np.allclose(result.state[k], start[k])]
    assert "dense.0.weight" in moved and any(k.startswith("features.17.") for k in moved)
    module = suffix_network(17, fine.frozen, result.state)
    stats = {k: v.numpy() for k, v in module.state_dict().items() if k.endswith("running_var")}
    for key, value in stats.items():
        assert np.array_equal(value, fine.frozen[key])


def test_each_round_trains_on_one_view_per_image(backbone):
    rng = np.random.default_rng(0)
    inputs = rng.standard_normal((12, 160, 2, 2)).astype(np.float32)  # 3 views x 4 images
    labels = np.tile([0, 1, 0, 1], 3)
    fine = learner(backbone, views=3)
    result = fine.train(fine.initial(), ArrayDataset(inputs, labels), seed=5)
    assert result.n_samples == 4


def test_the_prefix_past_the_last_tap_is_cut_after_the_stage_before(model_dir, backbone):
    """features.18 is not in backbone.onnx (taps end at 17): its input is stage 17's output."""
    from ftlct.bench.views import prefix_session

    session = prefix_session(model_dir, 1, 18)
    x = np.random.default_rng(0).standard_normal((2, 3, 224, 224)).astype(np.float32)
    out = session.run(None, {session.get_inputs()[0].name: x})[0]
    net = network_from_state(
        architecture("mobilenet_v2"), {k: torch.from_numpy(v) for k, v in backbone.items()}
    )
    harmoniser = pooled_backbone_from_manifest(
        model_dir.manifest["backbone"], {k: torch.from_numpy(v) for k, v in backbone.items()}
    ).harmoniser  # the prefix starts with the graph's harmonisation (export/harmonise.py)
    with torch.no_grad():
        reference = net.features[:18](harmoniser(torch.from_numpy(x))).numpy()
    assert out.shape == (2, 320, 7, 7)
    assert np.abs(out - reference).max() < 1e-3
