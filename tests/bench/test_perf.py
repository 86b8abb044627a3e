"""``ftl-bench perf`` and the int8 backbone it measures."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest

from ftlct.bench.cli import app
from ftlct.export.quantize import quantize_backbone
from ftlct.protocol.cli import run


def test_int8_backbone_is_smaller_and_gives_close_embeddings(model_dir, tmp_path):
    out = quantize_backbone(model_dir.backbone_path, tmp_path / "int8.onnx")
    assert out.stat().st_size < 0.4 * model_dir.backbone_path.stat().st_size
    x = np.random.default_rng(0).standard_normal((2, 3, 224, 224)).astype(np.float32)
    fp32, int8 = (
        ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, {"image": x})[0]
        for p in (model_dir.backbone_path, out)
    )
    assert int8.shape == fp32.shape == (2, 1280)
    cosine = (fp32 * int8).sum(1) / (np.linalg.norm(fp32, axis=1) * np.linalg.norm(int8, axis=1))
    assert cosine.min() > 0.9


def test_quantize_refuses_missing_files_and_unknown_types(tmp_path, model_dir):
    with pytest.raises(FileNotFoundError):
        quantize_backbone(tmp_path / "absent.onnx", tmp_path / "q.onnx")
    with pytest.raises(ValueError, match="weight_type"):
        quantize_backbone(model_dir.backbone_path, tmp_path / "q.onnx", weight_type="int4")


def test_perf_rejects_bad_thread_lists(tmp_path, capsys):
    assert run(app, "ftl-bench", ["perf", "--out", str(tmp_path), "--threads", "two"]) == 1
    assert "--threads" in capsys.readouterr().err


@pytest.mark.perf
def test_perf_quick_run_reports_every_measurement(tmp_path, imagenet_weights):
    assert run(app, "ftl-bench", ["perf", "--out", str(tmp_path), "--quick", "--threads", "1"]) == 0
    document = json.loads((tmp_path / "perf.json").read_text())
    assert [(r["threads"], r["batch"]) for r in document["backbone_throughput"]] == [
        (1, 1),
        (1, 8),
        (1, 32),
    ]
    assert all(r["images_per_s"] > 0 for r in document["backbone_throughput"])
    assert document["head_swap"]["engine_swap_ms"] > 0
    q = document["int8"]
    assert q["int8_bytes"] < q["fp32_bytes"] and 0.5 < q["embedding_cosine_mean"] <= 1.0
    assert document["torch_vs_ort"]["max_abs_diff"] < 1e-3  # same network, two runtimes
    assert "| threads | batch | images/s |" in (tmp_path / "perf.md").read_text()
