"""The model directory contract (``manifest.json`` + ONNX files), without torch.

Readers: the agent (inference, head swaps), the cloud (first global head),
``ftl-export verify``. A new head version is written as a *new* directory
that shares the backbone files, so a running reader never sees a half-written
model.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save

from ftlct.export.embedding_blocks import EmbeddingBlock, embedding_blocks
from ftlct.export.files import atomic_write_bytes, atomic_write_text, sha256_file
from ftlct.export.head_onnx import head_kind, head_layers, head_onnx_bytes
from ftlct.export.preprocessing import PreprocessingSpec

FORMAT = "ftlct-model/1"
MANIFEST = "manifest.json"
# node-name scope of the harmonisation the exporter writes before the network (export/harmonise.py)
HARMONISER_SCOPE = "/harmoniser/"
REQUIRED_KEYS = ("format", "version", "labels", "backbone", "head", "preprocessing", "provenance")


class ModelDirError(ValueError):
    """A model directory that is missing, malformed or does not match its manifest."""


def head_safetensors_bytes(
    arrays: dict[str, np.ndarray], metadata: dict[str, str] | None = None
) -> bytes:
    return save({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in arrays.items()}, metadata)


@dataclass
class ModelDir:
    path: Path
    manifest: dict

    # ------------------------------------------------------------------ reading
    @classmethod
    def load(cls, path: str | os.PathLike) -> ModelDir:
        """Read and check the manifest's shape (not the hashes: see ``problems``)."""
        path = Path(path)
        manifest_path = path / MANIFEST
        if not manifest_path.is_file():
            raise ModelDirError(f"{path}: not a model directory (no {MANIFEST})")
        try:
            manifest = json.loads(manifest_path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ModelDirError(f"{manifest_path}: unreadable manifest: {exc}") from exc
        missing = [k for k in REQUIRED_KEYS if k not in manifest]
        if missing:
            raise ModelDirError(f"{manifest_path}: manifest lacks {', '.join(missing)}")
        if manifest["format"] != FORMAT:
            raise ModelDirError(
                f"{manifest_path}: format {manifest['format']!r}, expected {FORMAT!r}"
            )
        for part in ("backbone", "head"):
            for key in ("file", "sha256"):
                if key not in manifest[part]:
                    raise ModelDirError(f"{manifest_path}: {part}.{key} missing")
        labels = manifest["labels"]
        if not isinstance(labels, list) or len(labels) < 2 or len(set(labels)) != len(labels):
            raise ModelDirError(f"{manifest_path}: labels must be a list of >= 2 distinct names")
        return cls(path, manifest)

    @property
    def version(self) -> str:
        return str(self.manifest["version"])

    @property
    def labels(self) -> list[str]:
        return list(self.manifest["labels"])

    @property
    def backbone_path(self) -> Path:
        return self.path / self.manifest["backbone"]["file"]

    @property
    def head_path(self) -> Path:
        return self.path / self.manifest["head"]["file"]

    @property
    def head_weights_path(self) -> Path:
        return self.path / self.manifest["head"]["weights"]

    @property
    def backbone_sha256(self) -> str:
        return self.manifest["backbone"]["sha256"]

    @property
    def embedding_dim(self) -> int:
        return int(self.manifest["backbone"]["output"]["dim"])

    @property
    def embedding_blocks(self) -> tuple[EmbeddingBlock, ...] | None:
        """Each tap x pooling block of the embedding; None for a manifest without them."""
        return embedding_blocks(self.manifest["backbone"].get("output", {}))

    @property
    def preprocessing(self) -> PreprocessingSpec:
        return PreprocessingSpec.from_json(self.manifest["preprocessing"])

    def head_weights(self) -> dict[str, np.ndarray]:
        try:
            return load_file(str(self.head_weights_path))
        except Exception as exc:
            raise ModelDirError(
                f"{self.head_weights_path.name}: unreadable head weights: {exc}"
            ) from exc

    def hashed_files(self) -> dict[str, str]:
        """file name -> sha256 the manifest promises."""
        files = {
            self.manifest["backbone"]["file"]: self.manifest["backbone"]["sha256"],
            self.manifest["head"]["file"]: self.manifest["head"]["sha256"],
        }
        for part in ("backbone", "head"):
            entry = self.manifest[part]
            if "weights" in entry and "weights_sha256" in entry:
                files[entry["weights"]] = entry["weights_sha256"]
        kept_float = self.manifest["backbone"].get("float")  # an int8 model's float backbone
        if kept_float:
            files[kept_float["file"]] = kept_float["sha256"]
        return files

    def problems(self) -> list[str]:
        """Files that are missing or whose sha256 differs from the manifest."""
        found = []
        for name, expected in self.hashed_files().items():
            file = self.path / name
            if not file.is_file():
                found.append(f"{name}: missing")
            elif sha256_file(file) != expected:
                found.append(f"{name}: sha256 differs from manifest")
        return found

    # ------------------------------------------------------------------ writing
    def with_head(
        self,
        out: str | os.PathLike,
        arrays: dict[str, np.ndarray],
        version: str,
        trained: bool = True,
        extra: dict | None = None,
    ) -> ModelDir:
        """A new model directory at ``out``: this backbone, the given head, a new version.

        Backbone files are hard-linked when possible (same file system), else copied.
        The manifest is written last, so a directory with a manifest is complete.
        """
        layers = head_layers(arrays)
        if layers[0][0].shape[1] != self.embedding_dim:
            raise ModelDirError(
                f"head takes {layers[0][0].shape[1]} inputs, backbone gives {self.embedding_dim}"
            )
        if layers[-1][0].shape[0] != len(self.labels):
            raise ModelDirError(
                f"head gives {layers[-1][0].shape[0]} classes, model has {len(self.labels)} labels"
            )
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        manifest = json.loads(json.dumps(self.manifest))
        backbone = manifest["backbone"]
        for name in (
            backbone.get("file"),
            backbone.get("weights"),
            backbone.get("float", {}).get("file"),
        ):
            if name:
                _link_or_copy(self.path / name, out / name)
        write_head_files(out, manifest, arrays, trained)
        manifest["version"] = version
        if extra:
            manifest.update(extra)
        atomic_write_text(out / MANIFEST, json.dumps(manifest, indent=2) + "\n")
        return ModelDir(out, manifest)


def write_head_files(
    out: Path, manifest: dict, arrays: dict[str, np.ndarray], trained: bool
) -> None:
    """Write ``head.onnx`` + ``head.safetensors`` and record them in ``manifest`` (in place)."""
    head = manifest.setdefault("head", {})
    head.setdefault("file", "head.onnx")
    head.setdefault("weights", "head.safetensors")
    onnx_bytes = head_onnx_bytes(arrays)
    weights_bytes = head_safetensors_bytes(arrays, {"kind": head_kind(arrays)})
    atomic_write_bytes(out / head["file"], onnx_bytes)
    atomic_write_bytes(out / head["weights"], weights_bytes)
    head.update(
        {
            "sha256": sha256_file(out / head["file"]),
            "weights_sha256": sha256_file(out / head["weights"]),
            "input": {"name": "embedding"},
            "output": {"name": "logits"},
            "kind": head_kind(arrays),
            "shapes": {k: list(v.shape) for k, v in sorted(arrays.items())},
            "trained": trained,
        }
    )


def _link_or_copy(src: Path, dst: Path) -> None:
    if dst.exists():
        if dst.samefile(src):
            return
        dst.unlink()
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
