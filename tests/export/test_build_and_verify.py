import json
import shutil

import numpy as np
import onnxruntime as ort
import pytest
import torch

from ftlct.export.backbones import PooledBackbone, architecture
from ftlct.export.build import export_backbone_onnx
from ftlct.export.files import sha256_file
from ftlct.export.heads import head_to_arrays, make_head
from ftlct.export.mobilenet_v2 import imagenet_mobilenet_v2
from ftlct.export.model_dir import ModelDir, ModelDirError
from ftlct.export.preprocessing import preprocess_file
from ftlct.export.verify import verify_model_dir
from tests.support.paths import COVID_CT, CQ500, require


@pytest.fixture
def model_copy(model_dir, tmp_path):
    target = tmp_path / "copy"
    shutil.copytree(model_dir.path, target)
    return target


def test_manifest_has_the_design_contract(model_dir):
    manifest = json.loads((model_dir.path / "manifest.json").read_text())
    assert manifest["format"] == "ftlct-model/1"
    assert manifest["labels"] == ["normal", "abnormal"]
    assert manifest["backbone"]["input"] == {
        "name": "image",
        "shape": [-1, 3, 224, 224],
        "dtype": "float32",
    }
    output = manifest["backbone"]["output"]
    assert (output["name"], output["dim"]) == ("embedding", 1280)
    assert manifest["backbone"]["architecture"] == "mobilenet_v2"
    assert output["taps"] == [10, 13, 16, 17] and output["pooling"] == ["mean", "max"]
    assert output["tap_names"] == ["features.10", "features.13", "features.16", "features.17"]
    assert 2 * sum(output["tap_channels"]) == 1280
    assert manifest["head"]["weights"] == "head.safetensors"
    assert manifest["head"]["trained"] is False
    assert "b0353104" in manifest["provenance"]["backbone"]
    for name, digest in ModelDir.load(model_dir.path).hashed_files().items():
        assert sha256_file(model_dir.path / name) == digest


def test_backbone_has_dynamic_batch(model_dir):
    session = ort.InferenceSession(str(model_dir.backbone_path), providers=["CPUExecutionProvider"])
    for batch in (1, 3):
        out = session.run(["embedding"], {"image": np.zeros((batch, 3, 224, 224), np.float32)})[0]
        assert out.shape == (batch, 1280)


def test_verify_passes_on_a_fresh_build_with_real_ct(model_dir):
    samples = [
        p for p in (CQ500 / "CT000100.dcm", COVID_CT / "covid" / "covid_0000.png") if p.exists()
    ]
    report = verify_model_dir(model_dir.path, samples)
    assert report.ok, report.first_failure
    parity = [c for c in report.checks if "parity" in c.name]
    assert len(parity) == 2 * (2 + len(samples))
    assert max(c.max_abs_diff for c in parity) <= 1e-3


def _harmonised(x: torch.Tensor) -> torch.Tensor:
    """The default harmonisation written out: blur sigma 1 (radius 3), standardise, renormalise."""
    line = torch.exp(-0.5 * torch.arange(-3.0, 4.0) ** 2)
    line = line / line.sum()
    kernel = (line[:, None] * line[None, :]).repeat(3, 1, 1, 1)
    x = torch.nn.functional.conv2d(
        torch.nn.functional.pad(x, [3] * 4, mode="reflect"), kernel, groups=3
    )
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    z = (x - x.mean(dim=(2, 3), keepdim=True)) / x.std(dim=(2, 3), unbiased=False, keepdim=True)
    return (torch.clamp(0.5 + z / 4, 0, 1) - mean) / std


def test_onnx_embedding_of_real_ct_equals_independent_torch_model(model_dir, imagenet_weights):
    path = require(CQ500 / "CT000120.dcm")
    batch = preprocess_file(path, model_dir.preprocessing)
    session = ort.InferenceSession(str(model_dir.backbone_path), providers=["CPUExecutionProvider"])
    onnx_embedding = session.run(["embedding"], {"image": batch})[0]
    reference = imagenet_mobilenet_v2(imagenet_weights)  # straight from the .pth, not the model dir
    parts = []
    with torch.no_grad():
        x = _harmonised(torch.from_numpy(batch))
        for index, block in enumerate(reference.features[:18]):
            x = block(x)
            if index in (10, 13, 16, 17):  # each tap: channel means, then channel maxima
                parts += [x.mean(dim=(2, 3)), x.amax(dim=(2, 3))]
        torch_embedding = torch.cat(parts, 1).numpy()
    scale = max(1.0, float(np.abs(torch_embedding).max()))  # max-pooled taps reach ~10
    assert np.abs(onnx_embedding - torch_embedding).max() <= 1e-4 * scale
    assert np.abs(torch_embedding).max() > 0.1  # a real, non-trivial embedding


@pytest.mark.parametrize(
    "name", ["backbone.onnx", "head.onnx", "head.safetensors", "backbone.safetensors"]
)
def test_corrupting_any_model_file_fails_verify(model_copy, name):
    path = model_copy / name
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    report = verify_model_dir(model_copy)
    assert not report.ok
    assert report.first_failure.name == "hashes"
    assert name in report.first_failure.detail


def test_missing_model_file_fails_verify(model_copy):
    (model_copy / "head.onnx").unlink()
    report = verify_model_dir(model_copy)
    assert not report.ok and "head.onnx: missing" in report.first_failure.detail


def test_corrupt_manifest_fails_verify(model_copy):
    (model_copy / "manifest.json").write_text("{not json")
    report = verify_model_dir(model_copy)
    assert not report.ok and report.first_failure.name == "manifest"


def test_train_mode_export_is_caught_by_parity(model_copy, imagenet_weights):
    """A backbone exported in train mode (batch statistics) must fail verify even with good hashes."""
    arch = architecture("mobilenet_v2")
    backbone = PooledBackbone(
        arch, imagenet_mobilenet_v2(imagenet_weights), (10, 13, 16, 17), ("mean", "max")
    )
    backbone.train()
    with torch.no_grad():  # one batch moves the running statistics, as a careless fine-tune would
        backbone(torch.randn(4, 3, 224, 224))
    backbone.eval()
    (model_copy / "backbone.onnx").write_bytes(export_backbone_onnx(backbone, 224))
    manifest = json.loads((model_copy / "manifest.json").read_text())
    manifest["backbone"]["sha256"] = sha256_file(model_copy / "backbone.onnx")
    (model_copy / "manifest.json").write_text(json.dumps(manifest))
    report = verify_model_dir(model_copy)
    assert not report.ok
    assert report.first_failure.name.startswith("backbone parity")


def test_with_head_writes_a_new_version_without_touching_the_old(model_dir, tmp_path):
    arrays = head_to_arrays(make_head("linear", 2))
    arrays["dense.0.bias"] = np.array([0.5, -0.5], dtype=np.float32)
    new = ModelDir.load(model_dir.path).with_head(tmp_path / "v2", arrays, "v2")
    assert new.version == "v2" and new.manifest["head"]["trained"] is True
    assert not new.problems()
    assert ModelDir.load(model_dir.path).version == model_dir.version
    session = ort.InferenceSession(str(new.head_path), providers=["CPUExecutionProvider"])
    logits = session.run(["logits"], {"embedding": np.zeros((1, 1280), np.float32)})[0]
    assert np.allclose(logits, [[0.5, -0.5]])


def test_with_head_refuses_a_head_of_the_wrong_shape(model_dir, tmp_path):
    arrays = head_to_arrays(make_head("linear", 3))
    with pytest.raises(ModelDirError, match="3 classes, model has 2 labels"):
        ModelDir.load(model_dir.path).with_head(tmp_path / "bad", arrays, "bad")
