"""The model in use: one immutable snapshot behind a reference that ``swap`` replaces.

A ``ModelSnapshot`` holds the model directory, both onnxruntime sessions and
the version. Readers take ``engine.current`` once and use that snapshot for a
whole job, so embeddings, probabilities and the version they report always
come from the same model, whatever swaps happen meanwhile. ``swap`` builds
the new snapshot completely (hashes checked, sessions created, head probed)
before one reference assignment publishes it; a failed swap leaves the old
model in place. A head-only update reuses the backbone session.

onnxruntime, numpy and the torch-free ``ftlct.export`` modules only: the edge
never imports torch.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort

from ftlct.export.head_onnx import softmax
from ftlct.export.model_dir import ModelDir, ModelDirError
from ftlct.export.preprocessing import PreprocessingSpec

# Images per backbone call. A batch of 8 or more runs slower a slice on this CPU than calls of
# up to 4 (the activations of a few 224 px images stay in cache): 1 thread 183 -> 205 images/s,
# 2 threads 346 -> 355 (the agent's session options, same process, README "Performance").
BACKBONE_CALL_IMAGES = 4

log = logging.getLogger(__name__)


class ModelError(ValueError):
    """A model directory that cannot serve: missing, altered, or inconsistent."""


def session_options(threads: int) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # Spinning workers would steal the core that decodes the next batch.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    # A memory pattern pre-plans one block for all of a batch's activations on top of the
    # arena; without it the arena reuses freed buffers: ~15% less peak memory, same speed
    # (ftl-bench perf, backbone levers).
    options.enable_mem_pattern = False
    return options


def _session(path: Path, threads: int) -> ort.InferenceSession:
    return ort.InferenceSession(
        str(path), session_options(threads), providers=["CPUExecutionProvider"]
    )


@dataclass(frozen=True, eq=False)
class ModelSnapshot:
    model: ModelDir
    backbone: ort.InferenceSession = field(repr=False)
    head: ort.InferenceSession = field(repr=False)

    @property
    def version(self) -> str:
        return self.model.version

    @property
    def labels(self) -> list[str]:
        return self.model.labels

    @property
    def backbone_sha256(self) -> str:
        return self.model.backbone_sha256

    @property
    def spec(self) -> PreprocessingSpec:
        return self.model.preprocessing

    @property
    def embedding_dim(self) -> int:
        return self.model.embedding_dim

    def embed(self, images: np.ndarray, run_options: ort.RunOptions | None = None) -> np.ndarray:
        """``float32 [N, 3, S, S]`` model input -> ``float32 [N, D]`` embeddings."""
        if len(images) == 0:
            return np.zeros((0, self.embedding_dim), dtype=np.float32)
        name = self.backbone.get_inputs()[0].name
        parts = [
            self.backbone.run(None, {name: images[i : i + BACKBONE_CALL_IMAGES]}, run_options)[0]
            for i in range(0, len(images), BACKBONE_CALL_IMAGES)
        ]
        return np.asarray(parts[0] if len(parts) == 1 else np.concatenate(parts), np.float32)

    def probabilities(self, embeddings: np.ndarray) -> np.ndarray:
        """``[N, D]`` embeddings -> ``[N, C]`` class probabilities (softmax of the head)."""
        if len(embeddings) == 0:
            return np.zeros((0, len(self.labels)), dtype=np.float32)
        name = self.head.get_inputs()[0].name
        logits = self.head.run(None, {name: np.ascontiguousarray(embeddings, np.float32)})[0]
        return softmax(np.asarray(logits, dtype=np.float64)).astype(np.float32)


def load_snapshot(
    model_dir: str | os.PathLike, threads: int = 0, reuse: ModelSnapshot | None = None
) -> ModelSnapshot:
    """Open and check a model directory; share ``reuse``'s backbone session if it is the same."""
    try:
        model = ModelDir.load(model_dir)
        problems = model.problems()
    except ModelDirError as exc:
        raise ModelError(str(exc)) from exc
    if problems:
        raise ModelError(f"{model_dir}: {'; '.join(problems)}")
    try:
        if reuse is not None and reuse.backbone_sha256 == model.backbone_sha256:
            backbone = reuse.backbone
        else:
            backbone = _session(model.backbone_path, threads)
        head = _session(model.head_path, threads)
    except Exception as exc:  # onnxruntime raises its own exception types
        raise ModelError(f"{model_dir}: onnxruntime cannot load it: {exc}") from exc
    snapshot = ModelSnapshot(model, backbone, head)
    probe = snapshot.probabilities(np.zeros((1, model.embedding_dim), dtype=np.float32))
    if probe.shape != (1, len(model.labels)) or not np.all(np.isfinite(probe)):
        raise ModelError(
            f"{model_dir}: head gives {probe.shape[1]} outputs for {len(model.labels)} labels"
        )
    return snapshot


class InferenceEngine:
    """Holds the current ``ModelSnapshot``; ``swap`` replaces it atomically."""

    def __init__(self, snapshot: ModelSnapshot, threads: int = 0):
        self._current = snapshot
        self.threads = threads
        self._swap_lock = threading.Lock()
        self._listeners: list[Callable[[ModelSnapshot, ModelSnapshot], None]] = []

    @classmethod
    def load(cls, model_dir: str | os.PathLike, threads: int = 0) -> InferenceEngine:
        return cls(load_snapshot(model_dir, threads), threads)

    @property
    def current(self) -> ModelSnapshot:
        """The snapshot to use for one unit of work; take it once, not per call."""
        return self._current

    def on_swap(self, listener: Callable[[ModelSnapshot, ModelSnapshot], None]) -> None:
        """Call ``listener(old, new)`` after every successful swap."""
        self._listeners.append(listener)

    def swap(self, new_model_dir: str | os.PathLike) -> ModelSnapshot:
        """Load ``new_model_dir`` and make it current; raises ``ModelError`` and keeps the old."""
        with self._swap_lock:
            old = self._current
            new = load_snapshot(new_model_dir, self.threads, reuse=old)
            self._current = new  # one reference assignment: readers see old or new, never a mix
        for listener in self._listeners:
            try:
                listener(old, new)
            except Exception:
                log.exception("model swap listener failed")
        return new
