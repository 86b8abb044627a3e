"""torch -> ONNX: build a model directory from ImageNet weights and a label list."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import warnings
from datetime import UTC, datetime
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from ftlct.export.backbones import (
    DEFAULT_BACKBONE,
    PooledBackbone,
    architecture,
    backbone_state,
    embedding_layout,
    stage_of_module,
)
from ftlct.export.batch_norm_map import batch_norm_map
from ftlct.export.files import atomic_write_bytes, atomic_write_text, sha256_file
from ftlct.export.harmonise import DEFAULT_HARMONISATION, Harmonisation
from ftlct.export.heads import head_to_arrays, make_head
from ftlct.export.model_dir import FORMAT, MANIFEST, ModelDir, write_head_files
from ftlct.export.preprocessing import PreprocessingSpec

ONNX_OPSET = 17


def export_backbone_onnx(backbone: nn.Module, input_size: int) -> bytes:
    """``image [N,3,S,S] -> embedding [N,D]`` with a dynamic batch axis.

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
    backbone: str = DEFAULT_BACKBONE,
    taps: tuple[int, ...] | None = None,
    pooling: tuple[str, ...] | None = None,
    harmonisation: Harmonisation = DEFAULT_HARMONISATION,
) -> ModelDir:
    """Write ``out/`` per DESIGN.md: backbone (ONNX + safetensors), untrained head, manifest.

    ``taps`` / ``pooling`` choose the pooled multi-layer embedding (default: the
    architecture's); the input normalisation is the architecture's own;
    ``harmonisation`` (``export/harmonise.py``) runs first inside ``backbone.onnx``.
    """
    if len(labels) < 2 or len(set(labels)) != len(labels) or any(not label for label in labels):
        raise ValueError(f"labels must be >= 2 distinct non-empty names, got {','.join(labels)!r}")
    arch = architecture(backbone)
    spec = dataclasses.replace(
        spec or PreprocessingSpec(input_size=input_size),
        input_size=input_size,
        mean=arch.mean,
        std=arch.std,
    )
    net = arch.imagenet(weights)
    pooled = PooledBackbone(
        arch, net, taps or arch.default_taps, pooling or arch.default_pooling, harmonisation
    )
    layout = embedding_layout(arch, net, pooled.taps, pooled.pooling)
    head_arrays = head_to_arrays(make_head(head, len(labels), layout["dim"], seed=seed))

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)  # the manifest goes last: no manifest, no model
    onnx_bytes = export_backbone_onnx(pooled.eval(), input_size)
    bn_map = [
        {**entry, "stage": stage_of_module(arch, entry["conv"])}
        for entry in batch_norm_map(onnx_bytes, net)
    ]
    atomic_write_bytes(out / "backbone.onnx", onnx_bytes)
    state = {k: v.contiguous() for k, v in backbone_state(arch, net).items()}
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
            "architecture": arch.name,
            "input": {
                "name": "image",
                "shape": [-1, 3, input_size, input_size],
                "dtype": "float32",
            },
            "output": {"name": "embedding", **layout},
            "harmonisation": harmonisation.to_json(),
            "opset": ONNX_OPSET,
            # folded Conv node -> its batch norm in backbone.safetensors (export/adabn.py)
            "batch_norm": bn_map,
        },
        "head": {},
        "preprocessing": spec.to_json(),
        "provenance": {
            "backbone": f"{arch.name} imagenet (weights sha256 {weights_sha[:8]}...)",
            "backbone_weights_sha256": weights_sha,
            "backbone_weights_is_imagenet": weights_sha == arch.weights_sha256,
            "trained_on": "nothing yet: head untrained (uniform output)",
            "built_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "builder": f"ftl-export (torch {torch.__version__})",
        },
    }
    write_head_files(out, manifest, head_arrays, trained=False)
    atomic_write_text(out / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    return ModelDir(out, manifest)
