"""``ftl-export build --int8``: a model directory serving a static int8 backbone, checked by verify."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from ftlct.export.cli import app
from ftlct.export.int8_backbone import (
    INT8_FILE,
    CalibrationError,
    calibration_inputs,
    float_backbone_path,
    make_int8,
)
from ftlct.export.model_dir import ModelDir, ModelDirError
from ftlct.export.preprocessing import to_model_input
from ftlct.export.verify import ct_phantom, verify_model_dir
from ftlct.protocol.cli import run


@pytest.fixture(scope="module")
def int8_model(model_dir, tmp_path_factory):
    copy = tmp_path_factory.mktemp("int8") / "m"
    shutil.copytree(model_dir.path, copy)
    phantoms = to_model_input([ct_phantom(seed=s) for s in range(10)], model_dir.preprocessing)
    return make_int8(ModelDir.load(copy), phantoms)


def test_int8_model_serves_the_int8_file_and_keeps_the_float_one(int8_model, model_dir):
    backbone = json.loads((int8_model.path / "manifest.json").read_text())["backbone"]
    assert backbone["file"] == INT8_FILE and int8_model.backbone_path.name == INT8_FILE
    assert backbone["float"] == {"file": "backbone.onnx", "sha256": model_dir.backbone_sha256}
    assert backbone["quantization"]["calibration_slices"] == 10
    assert int8_model.backbone_sha256 != model_dir.backbone_sha256  # another feature space
    assert float_backbone_path(int8_model).name == "backbone.onnx"


def test_verify_checks_float_against_torch_and_int8_against_float(int8_model):
    report = verify_model_dir(int8_model.path)
    assert report.ok, report.first_failure
    names = [c.name for c in report.checks]
    assert "int8 backbone" in names and "backbone parity (ct phantom)" in names


def test_verify_fails_when_the_kept_float_backbone_is_altered(int8_model, tmp_path):
    copy = tmp_path / "m"
    shutil.copytree(int8_model.path, copy)
    with (copy / "backbone.onnx").open("ab") as handle:
        handle.write(b"\0")
    report = verify_model_dir(copy)
    assert not report.ok and "backbone.onnx: sha256 differs" in report.first_failure.detail


def test_verify_fails_an_int8_backbone_outside_the_tolerance(int8_model, monkeypatch):
    from ftlct.export import verify

    monkeypatch.setattr(verify, "INT8_TOLERANCE", {"min_cosine": 0.99999, "mean_cosine": 0.99999})
    report = verify_model_dir(int8_model.path)
    assert not report.ok
    assert report.first_failure.name == "int8 backbone"
    assert "cosine to float" in report.first_failure.detail


def test_the_agent_serves_an_int8_model(int8_model):
    from ftlct.agent.inference.engine import load_snapshot

    snapshot = load_snapshot(int8_model.path, threads=1)
    x = to_model_input([ct_phantom(seed=99)], int8_model.preprocessing)
    assert snapshot.embed(x).shape == (1, 1280)
    assert snapshot.backbone_sha256 == int8_model.backbone_sha256


def test_a_new_head_keeps_the_int8_model_whole(int8_model, tmp_path):
    heads = {k: np.zeros_like(v) for k, v in int8_model.head_weights().items()}
    new = int8_model.with_head(tmp_path / "next", heads, "v2")
    assert (new.path / "backbone.onnx").is_file() and not new.problems()


def test_quantizing_twice_is_refused(int8_model):
    with pytest.raises(ModelDirError, match="already int8"):
        make_int8(int8_model, np.zeros((8, 3, 224, 224), np.float32))


def test_calibration_reads_pictures_and_refuses_folders_without_any(tmp_path, model_dir):
    pictures = tmp_path / "slices"
    pictures.mkdir()
    for i in range(3):
        grey = (np.random.default_rng(i).random((64, 64)) * 255).astype(np.uint8)
        Image.fromarray(grey).save(pictures / f"s{i}.png")
    (pictures / "notes.txt").write_text("not an image")
    assert calibration_inputs([pictures], model_dir.preprocessing).shape == (3, 3, 224, 224)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CalibrationError, match="no DICOM, PNG or JPG"):
        calibration_inputs([empty], model_dir.preprocessing)
    with pytest.raises(CalibrationError, match="no such file"):
        calibration_inputs([tmp_path / "absent"], model_dir.preprocessing)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--int8"], "--int8 needs --calibration"),
        (["--calibration", "."], "--calibration is for --int8"),
        (["--int8", "--calibration", "/nonexistent/slices"], "calibration path not found"),
    ],
)
def test_build_refuses_int8_arguments_that_cannot_work(tmp_path, capsys, args, message):
    assert run(app, "ftl-export", ["build", "--out", str(tmp_path / "m"), *args]) == 1
    assert message in capsys.readouterr().err
    assert not (tmp_path / "m" / "manifest.json").exists()
