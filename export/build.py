"""torch -> ONNX: build a model directory from ImageNet weights and a label list."""

from __future__ import annotations

import io
import json
import os
import warnings
from datetime import UTC, datetime
from pathlib import Path

import torch
from safetensors.torch import save_file

from ftlct.export.files import atomic_write_bytes, atomic_write_text, sha256_file
from ftlct.export.heads import head_to_arrays, make_head
from ftlct.export.mobilenet_v2 import (
    EMBEDDING_DIM,
    IMAGENET_WEIGHTS_SHA256,
    Backbone,
    backbone_state,
    imagenet_mobilenet_v2,
)
from ftlct.export.model_dir import FORMAT, MANIFEST, ModelDir, write_head_files
from ftlct.export.preprocessing import PreprocessingSpec

ONNX_OPSET = 17


def export_backbone_onnx(backbone: Backbone, input_size: int) -> bytes:
    """``image [N,3,S,S] -> embedding [N,1280]`` with a dynamic batch axis.

    The module must be in eval mode: exported in train mode, batch norm would use
    batch statistics and give different embeddings without any error.
    """
    backbone = backbone.eval()
    dummy = torch.zeros(1, 3, input_size, input_size)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(
            backbone,
            (dummy,),
            buffer,
            input_names=["image"],
            output_names=["embedding"],
            dynamic_axes={"image": {0: "batch"}, "embedding": {0: "batch"}},
            opset_version=ONNX_OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
    return buffer.getvalue()


def build_model_dir(
    out: str | os.PathLike,
    weights: str | os.PathLike,
    labels: list[str],
    input_size: int = 224,
    head: str = "linear",
    spec: PreprocessingSpec | None = None,
    seed: int = 0,
    version: str | None = None,
) -> ModelDir:
    """Write ``out/`` per DESIGN.md: backbone (ONNX + safetensors), untrained head, manifest."""
    if len(labels) < 2 or len(set(labels)) != len(labels) or any(not label for label in labels):
        raise ValueError(f"labels must be >= 2 distinct non-empty names, got {','.join(labels)!r}")
    spec = spec or PreprocessingSpec(input_size=input_size)
    if spec.input_size != input_size:
        spec = PreprocessingSpec(input_size, spec.windows, spec.grey_windows, spec.mean, spec.std)
    model = imagenet_mobilenet_v2(weights)
    backbone = Backbone(model.features).eval()
    head_arrays = head_to_arrays(make_head(head, len(labels), seed=seed))

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)  # the manifest goes last: no manifest, no model
    atomic_write_bytes(out / "backbone.onnx", export_backbone_onnx(backbone, input_size))
    state = {k: v.contiguous() for k, v in backbone_state(backbone).items()}
    tmp = out / ".backbone.safetensors.tmp"
    save_file(state, str(tmp))
    os.replace(tmp, out / "backbone.safetensors")

    weights_sha = sha256_file(weights)
    manifest = {
        "format": FORMAT,
        "version": version or f"0-untrained-{head}",
        "labels": list(labels),
        "backbone": {
            "file": "backbone.onnx",
            "sha256": sha256_file(out / "backbone.onnx"),
            "weights": "backbone.safetensors",
            "weights_sha256": sha256_file(out / "backbone.safetensors"),
            "architecture": "mobilenet_v2",
            "input": {
                "name": "image",
                "shape": [-1, 3, input_size, input_size],
                "dtype": "float32",
            },
            "output": {"name": "embedding", "dim": EMBEDDING_DIM},
            "opset": ONNX_OPSET,
        },
        "head": {},
        "preprocessing": spec.to_json(),
        "provenance": {
            "backbone": f"mobilenet_v2 imagenet (torchvision weights sha256 {weights_sha[:8]}...)",
            "backbone_weights_sha256": weights_sha,
            "backbone_weights_is_torchvision_imagenet": weights_sha == IMAGENET_WEIGHTS_SHA256,
            "trained_on": "nothing yet: head untrained (uniform output)",
            "built_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "builder": f"ftl-export (torch {torch.__version__})",
        },
    }
    write_head_files(out, manifest, head_arrays, trained=False)
    atomic_write_text(out / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    return ModelDir(out, manifest)
