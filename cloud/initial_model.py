"""What a federation federates, and the weights it starts from.

The cloud aggregates named float32 tensors; what they mean is fixed when a
federation is created and pinned for its lifetime:

- a **head** (``--model DIR``): the ``dense.*`` head of an ``ftl-export``
  model directory, to run on top of that directory's frozen backbone. The
  pin is the backbone's sha256; agents install only heads for their own
  backbone. Every strategy may federate a head; ``ftl`` federates nothing else.
- a **whole network** (``--initial-weights FILE.safetensors``): every tensor
  of a network trained end to end (the conventional-FL baselines). The pin
  is the sha256 of the tensors' names and shapes
  (``protocol.messages.weights_layout_sha256``). The file's metadata names
  the labels (``labels``: a JSON list); ``version`` is optional. No backbone,
  so an agent (which runs a backbone + head) refuses these models by kind.

A whole network is not a model directory: that contract (``backbone.onnx`` +
``head.onnx``, stock onnxruntime) describes what an agent serves, and a
network federated from random initialisation has no frozen part to pin.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ftlct.export.model_dir import ModelDir
from ftlct.protocol.messages import TENSOR_NAME, weights_layout_sha256

HEAD = "head"
NETWORK = "network"


class InitialModelError(ValueError):
    """``--initial-weights`` names a file that cannot start a federation."""


@dataclass(frozen=True)
class InitialModel:
    """The first global weights of a new federation, and what they are pinned to."""

    kind: str  # HEAD | NETWORK
    version: str
    labels: list[str]
    weights: dict[str, np.ndarray]
    source: str  # for messages: the model directory or the weights file
    backbone_sha256: str = ""  # HEAD: the frozen backbone the head runs on
    architecture_sha256: str = ""  # NETWORK: weights_layout_sha256 of the weights

    @property
    def pin(self) -> str:
        return self.backbone_sha256 if self.kind == HEAD else self.architecture_sha256


def federation_kind(store) -> str:
    """What the federation in ``store`` federates; state dirs from before whole networks hold heads."""
    return store.meta.get("kind") or HEAD


def head_of(model: ModelDir) -> InitialModel:
    """A head federation from a model directory (its head is global version 1)."""
    return InitialModel(
        kind=HEAD,
        version=model.version,
        labels=model.labels,
        weights=model.head_weights(),
        source=str(model.path),
        backbone_sha256=model.backbone_sha256,
    )


def network_from_file(path: str | Path) -> InitialModel:
    """A whole-network federation from a safetensors file whose metadata names the labels."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise InitialModelError(f"--initial-weights {path}: no such file")
    try:
        with safe_open(str(path), framework="numpy") as handle:
            metadata = handle.metadata() or {}
            weights = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118 (no __iter__)
    except Exception as exc:  # safetensors raises its own error types
        raise InitialModelError(f"--initial-weights {path}: not a safetensors file: {exc}") from exc
    if not weights:
        raise InitialModelError(f"--initial-weights {path}: holds no tensors")
    for name, value in weights.items():
        if not TENSOR_NAME.match(name):
            raise InitialModelError(f"--initial-weights {path}: tensor name {name!r} not allowed")
        if value.dtype != np.float32:
            raise InitialModelError(
                f"--initial-weights {path}: {name} is {value.dtype}; the cloud federates float32"
            )
        if not np.isfinite(value).all():
            raise InitialModelError(f"--initial-weights {path}: {name} has non-finite values")
    labels = _labels(path, metadata.get("labels"))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:8]
    version = metadata.get("version") or f"init-{digest}"
    if not 0 < len(version) <= 128:
        raise InitialModelError(f"--initial-weights {path}: metadata version must be 1-128 chars")
    return InitialModel(
        kind=NETWORK,
        version=version,
        labels=labels,
        weights=weights,
        source=str(path),
        architecture_sha256=weights_layout_sha256(weights),
    )


def write_network_file(
    path: str | Path, weights: dict[str, np.ndarray], labels, version: str | None = None
) -> Path:
    """Write an ``--initial-weights`` file: the tensors, ``labels`` (a JSON list) and ``version``.

    No checks here: ``network_from_file`` is where a file is judged, whoever wrote it.
    """
    from safetensors.numpy import save_file

    metadata = {"labels": json.dumps(list(labels))}
    if version is not None:
        metadata["version"] = version
    save_file(weights, str(path), metadata=metadata)
    return Path(path)


def _labels(path: Path, raw: str | None) -> list[str]:
    try:
        labels = json.loads(raw) if raw else None
    except json.JSONDecodeError:
        labels = None
    if (
        not isinstance(labels, list)
        or len(labels) < 2
        or not all(isinstance(x, str) and x and "," not in x for x in labels)
        or len(set(labels)) != len(labels)
    ):
        raise InitialModelError(
            f"--initial-weights {path}: metadata 'labels' must be a JSON list of >= 2 distinct "
            "names without commas"
        )
    return labels
