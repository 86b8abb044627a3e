"""AdaBN without torch: statistics equal PyTorch's train-mode estimate, the adapted model verifies."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest
import torch
from safetensors.numpy import load_file as load_numpy
from safetensors.torch import load_file

from ftlct.export.adabn import AdaptationError, adapt_model_dir, balanced_sample, estimate
from ftlct.export.backbones import pooled_backbone_from_manifest
from ftlct.export.model_dir import HARMONISER_SCOPE, ModelDir
from ftlct.export.verify import verify_model_dir


def batches(seed=0, n=3, size=8):
    rng = np.random.default_rng(seed)
    # a "scanner" unlike ImageNet: brighter and lower contrast than the normalised inputs
    return [
        (0.5 * rng.standard_normal((size, 3, 224, 224)) + 0.8).astype(np.float32) for _ in range(n)
    ]


def test_the_backbone_has_no_batch_norm_nodes_and_the_manifest_maps_every_folded_conv(model_dir):
    graph = onnx.load(str(model_dir.backbone_path)).graph
    assert not [n for n in graph.node if n.op_type == "BatchNormalization"]
    convs = [
        n.name
        for n in graph.node
        if n.op_type == "Conv" and not n.name.startswith(HARMONISER_SCOPE)
    ]  # the harmoniser's blur is a fixed convolution with no batch norm
    mapping = model_dir.manifest["backbone"]["batch_norm"]
    assert [e["conv_node"] for e in mapping] == convs
    assert mapping[0]["batch_norm"] == "features.0.1" and mapping[0]["stage"] == 0


def test_statistics_equal_pytorch_train_mode_estimate(model_dir):
    data = batches()
    stats = estimate(model_dir, data)
    reference = pooled_backbone_from_manifest(
        model_dir.manifest["backbone"], load_file(str(model_dir.path / "backbone.safetensors"))
    )
    for module in reference.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # cumulative average over batches, as AdaBN does
    reference.train()
    with torch.no_grad():
        for batch in data:
            reference(torch.from_numpy(batch))
    state = reference.net.state_dict()
    assert len(stats) == 51
    for name, (mean, var) in stats.items():
        torch_mean = state[f"{name}.running_mean"].numpy()
        torch_var = state[f"{name}.running_var"].numpy()  # unbiased: n/(n-1) with n >= 392
        std = np.sqrt(torch_var) + 1e-3
        assert np.abs(mean - torch_mean).max() / std.max() < 1e-3, name
        assert np.allclose(var, torch_var, rtol=5e-3, atol=1e-6), name


def test_adapted_model_directory_verifies_and_records_its_base(model_dir, tmp_path):
    stats = estimate(model_dir, batches())
    adapted = adapt_model_dir(model_dir, tmp_path / "site", stats, {"n_images": 24})
    report = verify_model_dir(adapted.path)
    assert report.ok, report.first_failure
    record = adapted.manifest["backbone"]["adaptation"]
    assert record["method"] == "adabn" and record["n_images"] == 24
    assert record["base_sha256"] == model_dir.backbone_sha256
    assert adapted.backbone_sha256 != model_dir.backbone_sha256
    weights = load_numpy(str(adapted.path / "backbone.safetensors"))
    assert np.allclose(weights["features.3.conv.0.1.running_var"], stats["features.3.conv.0.1"][1])
    # the original directory is untouched
    assert not model_dir.problems()


def test_early_stages_only_leave_the_later_statistics_alone(model_dir, tmp_path):
    stats = estimate(model_dir, batches(n=2), up_to_stage=6)
    assert stats and all(int(name.split(".")[1]) <= 6 for name in stats)
    adapted = adapt_model_dir(model_dir, tmp_path / "early", stats, {})
    before = load_numpy(str(model_dir.path / "backbone.safetensors"))
    after = load_numpy(str(adapted.path / "backbone.safetensors"))
    assert np.array_equal(
        before["features.12.conv.0.1.running_mean"], after["features.12.conv.0.1.running_mean"]
    )
    assert not np.array_equal(
        before["features.2.conv.0.1.running_mean"], after["features.2.conv.0.1.running_mean"]
    )
    assert adapted.manifest["backbone"]["adaptation"]["up_to_stage"] == 6


def test_a_model_directory_without_the_batch_norm_map_is_refused(model_dir, tmp_path):
    copy = tmp_path / "old"
    shutil.copytree(model_dir.path, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    del manifest["backbone"]["batch_norm"]
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(AdaptationError, match="rebuild it"):
        estimate(ModelDir.load(copy), batches(n=1))


def test_batches_of_one_slice_cannot_estimate(model_dir):
    with pytest.raises(AdaptationError, match="at least 2"):
        estimate(model_dir, [batches(n=1)[0][:1]])


def test_balanced_sample_takes_each_label_evenly():
    labels = np.array([0] * 50 + [1] * 5 + [2] * 20)
    chosen = balanced_sample(labels, per_class=10, seed=0)
    assert np.bincount(labels[chosen]).tolist() == [10, 5, 10]
    assert np.array_equal(chosen, balanced_sample(labels, per_class=10, seed=0))
