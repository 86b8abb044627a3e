"""The pooled multi-layer embedding: layout, manifest, parity, old model directories, Lite0."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnxruntime as ort
import pytest
import torch
from safetensors.torch import load_file

from ftlct.export.backbones import (
    PooledBackbone,
    architecture,
    network_from_state,
    pooled_backbone_from_manifest,
)
from ftlct.export.build import build_model_dir
from ftlct.export.files import sha256_file
from ftlct.export.harmonise import NO_HARMONISATION
from ftlct.export.model_dir import ModelDir
from ftlct.export.preprocessing import to_model_input
from ftlct.export.verify import ct_phantom, verify_model_dir


def _embed(model: ModelDir, batch: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(model.backbone_path), providers=["CPUExecutionProvider"])
    return session.run(["embedding"], {"image": batch})[0]


def test_embedding_is_each_tap_mean_then_max_in_order(model_dir):
    batch = to_model_input([ct_phantom(seed=3)], model_dir.preprocessing)
    embedding = _embed(model_dir, batch)[0]
    net = network_from_state(
        architecture("mobilenet_v2"), load_file(str(model_dir.path / "backbone.safetensors"))
    )
    reference = pooled_backbone_from_manifest(
        model_dir.manifest["backbone"], load_file(str(model_dir.path / "backbone.safetensors"))
    )
    with torch.no_grad():
        x = reference.harmoniser(torch.from_numpy(batch))
        for block in net.features[:11]:
            x = block(x)
    first = x[0]  # features.10: 64 channels
    # standardising (the harmoniser) scales onnxruntime's and torch's rounding apart a little
    assert np.allclose(embedding[:64], first.mean(dim=(1, 2)).numpy(), atol=1e-3)
    assert np.allclose(embedding[64:128], first.amax(dim=(1, 2)).numpy(), atol=1e-3)


@pytest.fixture
def old_layout_dir(imagenet_weights, tmp_path):
    """A model directory as builds before the multi-layer embedding wrote it (no taps recorded)."""
    model = build_model_dir(
        tmp_path / "old",
        imagenet_weights,
        ["a", "b"],
        taps=(18,),
        pooling=("mean",),
        harmonisation=NO_HARMONISATION,
    )
    manifest = json.loads((model.path / "manifest.json").read_text())
    output = manifest["backbone"]["output"]
    manifest["backbone"]["output"] = {"name": output["name"], "dim": output["dim"]}
    del manifest["backbone"]["harmonisation"]
    (model.path / "manifest.json").write_text(json.dumps(manifest))
    return model.path


def test_a_model_directory_without_taps_is_the_final_layer_and_still_verifies(old_layout_dir):
    report = verify_model_dir(old_layout_dir)
    assert report.ok, report.first_failure
    model = ModelDir.load(old_layout_dir)
    assert model.embedding_dim == 1280
    reference = pooled_backbone_from_manifest(
        model.manifest["backbone"], load_file(str(old_layout_dir / "backbone.safetensors"))
    )
    assert reference.taps == (18,) and reference.pooling == ("mean",)


def test_a_manifest_that_misstates_the_layout_fails_verify(model_dir, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(model_dir.path, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["backbone"]["output"]["taps"] = [9, 13, 16, 17]  # features.9 has 64 channels too
    (copy / "manifest.json").write_text(json.dumps(manifest))
    report = verify_model_dir(copy)
    assert not report.ok and report.first_failure.name.startswith("backbone parity")


def test_taps_must_be_increasing_stage_indices(imagenet_weights):
    net = architecture("mobilenet_v2").imagenet(imagenet_weights)
    for taps in ((), (13, 10), (10, 19), (-1, 3)):
        with pytest.raises(ValueError, match="taps must be"):
            PooledBackbone(architecture("mobilenet_v2"), net, taps, ("mean",))
    with pytest.raises(ValueError, match="pooling"):
        PooledBackbone(architecture("mobilenet_v2"), net, (10,), ("median",))


def test_efficientnet_lite0_model_directory_builds_and_verifies(lite0_weights, tmp_path):
    model = build_model_dir(
        tmp_path / "lite0", lite0_weights, ["a", "b"], backbone="efficientnet_lite0"
    )
    backbone = model.manifest["backbone"]
    assert backbone["architecture"] == "efficientnet_lite0"
    assert backbone["output"]["tap_names"] == [
        "_blocks.5", "_blocks.8", "_blocks.11", "_blocks.14", "_blocks.15"
    ]  # fmt: skip
    assert backbone["output"]["dim"] == 2 * (80 + 112 + 192 + 192 + 320)
    assert model.preprocessing.mean == pytest.approx((127 / 255,) * 3)
    assert model.preprocessing.std == pytest.approx((128 / 255,) * 3)
    assert backbone["weights_sha256"] == sha256_file(model.path / "backbone.safetensors")
    report = verify_model_dir(model.path)
    assert report.ok, report.first_failure
    embedding = _embed(model, to_model_input([ct_phantom()], model.preprocessing))
    assert embedding.shape == (1, backbone["output"]["dim"])
