"""Views: one image as one site's scanner delivers it, turned into what a method trains on.

A view is (scanner profile, image). For each view the store can keep

- ``input``: the preprocessed model input ``[3, S, S]`` (float16 on disk: the
  whole-network baselines train on it);
- ``embedding``: the ``backbone.onnx`` embedding ``[1280]``, computed the way
  the agent does (``ftlct.agent.inference.engine``: the same onnxruntime
  session set-up and ``ModelSnapshot.embed``);
- ``prefix{k}``: the input of stage ``k`` (MobileNetV2 ``features.k``), from
  the same ``backbone.onnx`` cut there: what the fine-tuned ``fedavg`` /
  ``cfl`` baselines train on (float16 on disk).

Each is computed once and cached under ``cache_dir`` (memory-mapped ``.npy``
per kind and profile, a mask of what is done, and the seconds each took, so a
second run reports the same extraction cost as the first).
Decoding goes through the shared preprocessing (``read_slices``,
``to_model_input``); the scanner profile acts in between.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx.utils import Extractor

from ftlct.agent.inference.engine import load_snapshot, session_options
from ftlct.bench.dataset import LabelledImages
from ftlct.bench.scanners import ScannerProfile, resample
from ftlct.export.model_dir import ModelDir
from ftlct.export.preprocessing import Slice, read_slices, to_model_input

KINDS = ("input", "embedding")  # and prefix{k}, k a stage index
CACHE_FORMAT = "ftlct-bench-views/1"
CHUNK = 32
# scopes of a stage's nodes: the pooled backbone's and the earlier layout's
STAGE_SCOPES = ("/features.{k}/", "/features/features.{k}/")

Progress = Callable[[int], None]  # called with the number of views just finished


class ViewError(ValueError):
    """An image that cannot be read, or a backbone that cannot be cut for the prefix."""


def representative_slice(path: Path) -> Slice:
    """The slice a file stands for: the only one, or the middle frame of a multi-frame file."""
    slices = read_slices(path)
    if not slices:
        raise ViewError(f"{path.name}: no image data")
    return slices[len(slices) // 2]


def is_kind(kind: str) -> bool:
    return kind in KINDS or (kind.startswith("prefix") and kind[6:].isdigit())


def prefix_session(model: ModelDir, threads: int, stage: int) -> ort.InferenceSession:
    """``backbone.onnx`` cut at the input of stage ``stage``: image -> ``[N, C, h, w]``."""
    graph = onnx.load(str(model.backbone_path))
    scopes = tuple(scope.format(k=stage) for scope in STAGE_SCOPES)
    cut = next((n.input[0] for n in graph.graph.node if n.name.startswith(scopes)), None)
    if cut is None:  # the stage is past the embedding's last tap: cut after the stage before it
        before = tuple(scope.format(k=stage - 1) for scope in STAGE_SCOPES)
        last = [n for n in graph.graph.node if n.name.startswith(before)]
        cut = last[-1].output[0] if last else None
    if cut is None:
        raise ViewError(f"{model.backbone_path.name} has no features.{stage} node to cut before")
    input_name = graph.graph.input[0].name
    part = Extractor(onnx.shape_inference.infer_shapes(graph)).extract_model([input_name], [cut])
    return ort.InferenceSession(
        part.SerializeToString(), session_options(threads), providers=["CPUExecutionProvider"]
    )


class ViewStore:
    def __init__(
        self,
        cache_dir: Path,
        dataset: LabelledImages,
        model: ModelDir,
        profiles: Sequence[ScannerProfile],
        threads: int = 0,
    ):
        self.dataset = dataset
        self.model = model
        self.spec = model.preprocessing
        self.profiles = tuple(profiles)
        self.threads = threads
        self._snapshot = None
        self._prefix: dict[str, ort.InferenceSession] = {}
        self._shapes: dict[str, tuple[int, ...]] = {
            "input": (3, self.spec.input_size, self.spec.input_size),
            "embedding": (model.embedding_dim,),
        }
        key = hashlib.sha256(
            json.dumps(
                {
                    "format": CACHE_FORMAT,
                    "root": str(dataset.root.resolve()),
                    "files": hashlib.sha256("\n".join(dataset.paths).encode()).hexdigest(),
                    "spec": self.spec.to_json(),
                    "backbone": model.backbone_sha256,
                },
                sort_keys=True,
            ).encode()
        ).hexdigest()[:16]
        self.root = Path(cache_dir) / f"views-{key}"
        self.root.mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------------ files
    def _profile_key(self, profile: int) -> str:
        text = json.dumps(self.profiles[profile].to_json(), sort_keys=True)
        return f"{self.profiles[profile].name}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"

    def _files(self, kind: str, profile: int) -> tuple[Path, Path, Path]:
        stem = self.root / f"{kind}-{self._profile_key(profile)}"
        return stem.with_suffix(".npy"), stem.with_suffix(".done.npy"), stem.with_suffix(".sec.npy")

    def _arrays(self, kind: str, profile: int, shape: tuple[int, ...] | None = None):
        data_path, done_path, sec_path = self._files(kind, profile)
        n = len(self.dataset)
        if data_path.is_file() and done_path.is_file() and sec_path.is_file():
            data = np.load(data_path, mmap_mode="r+")
            return data, np.load(done_path), np.load(sec_path)
        dtype = np.float32 if kind == "embedding" else np.float16
        data = np.lib.format.open_memmap(data_path, mode="w+", dtype=dtype, shape=(n, *shape))
        return data, np.zeros(n, dtype=bool), np.zeros(n, dtype=np.float64)

    def _shape(self, kind: str, sample: np.ndarray) -> tuple[int, ...]:
        if kind not in self._shapes:
            self._shapes[kind] = tuple(self._run(kind, sample[:1]).shape[1:])
        return self._shapes[kind]

    # ------------------------------------------------------------------ compute
    def _run(self, kind: str, images: np.ndarray) -> np.ndarray:
        if kind == "embedding":
            if self._snapshot is None:
                self._snapshot = load_snapshot(self.model.path, self.threads)
            return self._snapshot.embed(images)
        if kind not in self._prefix:
            self._prefix[kind] = prefix_session(self.model, self.threads, int(kind[6:]))
        session = self._prefix[kind]
        return np.asarray(session.run(None, {session.get_inputs()[0].name: images})[0])

    def missing(self, kinds: Sequence[str], wanted: dict[int, np.ndarray]) -> int:
        """How many (kind, view) entries ``ensure`` would compute."""
        count = 0
        for kind in kinds:
            for profile, indices in wanted.items():
                done_path = self._files(kind, profile)[1]
                done = (
                    np.load(done_path) if done_path.is_file() else np.zeros(len(self.dataset), bool)
                )
                count += int((~done[np.asarray(indices, dtype=np.int64)]).sum())
        return count

    def ensure(
        self,
        kinds: Sequence[str],
        wanted: dict[int, np.ndarray],
        progress: Progress | None = None,
    ) -> None:
        """Compute what is not cached yet: ``kinds`` for every (profile, image) in ``wanted``."""
        unknown = sorted(k for k in kinds if not is_kind(k))
        if unknown:
            raise ValueError(f"unknown view kinds {unknown}")
        state = {}
        todo: dict[int, set[int]] = {}
        for kind in kinds:
            for profile, indices in wanted.items():
                arrays = self._open(kind, profile)
                state[kind, profile] = arrays
                done = arrays[1] if arrays else np.zeros(len(self.dataset), bool)
                for i in np.asarray(indices, dtype=np.int64):
                    if not done[i]:
                        todo.setdefault(int(i), set()).add(profile)
        images = sorted(todo)
        for start in range(0, len(images), CHUNK):
            chunk = images[start : start + CHUNK]
            grids = {i: self._grid_slice(i) for i in chunk}
            for profile in sorted({p for i in chunk for p in todo[i]}):
                members = [i for i in chunk if profile in todo[i]]
                inputs = to_model_input(
                    [
                        self.profiles[profile].apply(
                            grids[i], self.spec.input_size, self.dataset.paths[i]
                        )
                        for i in members
                    ],
                    self.spec,
                )
                for kind in kinds:
                    if state[kind, profile] is None:
                        state[kind, profile] = self._arrays(
                            kind, profile, self._shape(kind, inputs)
                        )
                    data, done, seconds = state[kind, profile]
                    rows = [k for k, i in enumerate(members) if not done[i]]
                    if not rows:
                        continue
                    started = time.perf_counter()
                    values = inputs[rows] if kind == "input" else self._run(kind, inputs[rows])
                    per_view = (time.perf_counter() - started) / len(rows)
                    index = np.array([members[k] for k in rows])
                    data[index] = values.astype(data.dtype)
                    done[index] = True
                    seconds[index] = 0.0 if kind == "input" else per_view
                if progress:
                    progress(len(members))
            self._flush(state)

    def _open(self, kind: str, profile: int):
        """The cached arrays, or None while the kind's shape is unknown (nothing computed yet)."""
        if self._files(kind, profile)[0].is_file() or kind in self._shapes:
            return self._arrays(kind, profile, self._shapes.get(kind))
        return None

    def _flush(self, state) -> None:
        """Data first, then the masks that say it is there."""
        for (kind, profile), arrays in state.items():
            if arrays is None:
                continue
            data, done, seconds = arrays
            data.flush()
            _, done_path, sec_path = self._files(kind, profile)
            np.save(sec_path, seconds)
            np.save(done_path, done)

    def model_inputs(self, profile: int, indices: np.ndarray) -> np.ndarray:
        """The preprocessed inputs of ``indices`` through ``profile`` (computed, not cached)."""
        return to_model_input(
            [
                self.profiles[profile].apply(
                    self._grid_slice(int(i)), self.spec.input_size, self.dataset.paths[int(i)]
                )
                for i in indices
            ],
            self.spec,
        )

    def _grid_slice(self, index: int) -> Slice:
        """The image resampled to the input grid (every profile starts from this)."""
        try:
            slice_ = representative_slice(self.dataset.file(index))
        except ValueError as exc:
            raise ViewError(f"{self.dataset.paths[index]}: {exc}") from exc
        return Slice(resample(slice_.values, self.spec.input_size), slice_.is_hu)

    # ------------------------------------------------------------------ reading
    def get(self, kind: str, profile: int, indices: np.ndarray) -> np.ndarray:
        """The cached arrays (in memory) for ``indices`` seen through ``profile``."""
        data, done, _ = self._arrays(kind, profile, self._shapes.get(kind))
        indices = np.asarray(indices, dtype=np.int64)
        if not done[indices].all():
            raise ViewError(f"{kind} views of profile {profile} not computed; call ensure first")
        return np.asarray(data[indices])

    def seconds(self, kind: str, profile: int, indices: np.ndarray) -> float:
        """Extraction time (onnxruntime) those views took when they were computed."""
        _, _, seconds = self._arrays(kind, profile, self._shapes.get(kind))
        return float(seconds[np.asarray(indices, dtype=np.int64)].sum())
