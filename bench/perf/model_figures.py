"""Model figures of ``ftl-bench perf`` beside the goals of issue 13: the model, its inputs,
preprocessing rate on real CQ500 DICOM, head swap, torch vs onnxruntime.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ftlct.export.weights import REPO_ROOT

SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
CQ500 = SHARED_DATA / "cq500-series"
COVID_CT = SHARED_DATA / "covid-ct"
INPUT_SIZE = 224


def timed(fn: Callable[[], object], repeats: int) -> float:
    """Median seconds of ``fn`` over ``repeats`` runs, after one warm-up run."""
    fn()
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def load_model(work: Path, given: Path | None = None):
    """The model directory to measure: ``given``, else one built (and kept) under ``work``."""
    from ftlct.export.build import build_model_dir
    from ftlct.export.model_dir import ModelDir
    from ftlct.export.weights import resolve_weights

    if given is not None:
        return ModelDir.load(given)
    path = work / "model"
    if (path / "manifest.json").is_file():
        model = ModelDir.load(path)
        if not model.problems():
            return model
    return build_model_dir(path, resolve_weights(None), ["normal", "abnormal"], INPUT_SIZE)


def real_inputs(model, count: int) -> tuple[np.ndarray, str]:
    from ftlct.export.preprocessing import preprocess_file

    files = sorted(CQ500.glob("*.dcm"))[:count] if CQ500.is_dir() else []
    if files:
        return np.concatenate(
            [preprocess_file(f, model.preprocessing) for f in files]
        ), "CQ500 slices"
    rng = np.random.default_rng(0)
    return rng.standard_normal((count, 3, INPUT_SIZE, INPUT_SIZE)).astype(
        np.float32
    ), "random input"


def preprocessing_rate(model, count: int) -> dict:
    from ftlct.export.preprocessing import read_slices, to_model_input

    files = sorted(CQ500.glob("*.dcm"))[:count] if CQ500.is_dir() else []
    if not files:
        return {"skipped": f"{CQ500} absent"}
    spec = model.preprocessing
    started = time.perf_counter()
    slices = 0
    for file in files:
        slices += len(to_model_input(read_slices(file), spec))
    seconds = time.perf_counter() - started
    return {
        "files": len(files),
        "slices_per_s": round(slices / seconds, 2),
        "ms_per_slice": round(1000 * seconds / slices, 2),
        "what": "pydicom + pylibjpeg decode (JPEG Lossless), HU, 3 windows, resize to 224, normalise",
    }


def head_swap(model, work: Path, repeats: int) -> dict:
    from ftlct.agent.inference.engine import InferenceEngine

    engine = InferenceEngine.load(model.path, threads=1)
    rng = np.random.default_rng(0)
    heads = model.head_weights()
    write, swap = [], []
    for index in range(repeats + 1):
        arrays = {
            k: rng.standard_normal(v.shape).astype(np.float32) * 0.01 for k, v in heads.items()
        }
        started = time.perf_counter()
        new = model.with_head(work / f"head-{index}", arrays, f"perf-{index}")
        written = time.perf_counter()
        engine.swap(new.path)
        done = time.perf_counter()
        if index:  # the first is the warm-up
            write.append(written - started)
            swap.append(done - written)
    return {
        "write_model_dir_ms": round(1000 * statistics.median(write), 2),
        "engine_swap_ms": round(1000 * statistics.median(swap), 2),
        "what": "head.onnx + head.safetensors + manifest (backbone hard-linked), then "
        "InferenceEngine.swap (hash check, new head session, probe)",
    }


def torch_vs_ort(model, inputs: np.ndarray, threads: int, repeats: int) -> dict:
    import torch
    from safetensors.torch import load_file

    from ftlct.agent.inference.engine import load_snapshot
    from ftlct.export.backbones import pooled_backbone_from_manifest
    from ftlct.export.verify import TOLERANCE as PARITY_TOLERANCE

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        backbone = pooled_backbone_from_manifest(
            model.manifest["backbone"], load_file(str(model.path / "backbone.safetensors"))
        )
        snapshot = load_snapshot(model.path, threads)
        batch = np.ascontiguousarray(inputs[:8])
        tensor = torch.from_numpy(batch)

        def run_torch():
            with torch.inference_mode():
                return backbone(tensor).numpy()

        torch_s = timed(run_torch, repeats)
        ort_s = timed(lambda: snapshot.embed(batch), repeats)
        reference = run_torch()
        diff = float(np.abs(reference - snapshot.embed(batch)).max())
        # judged as `ftl-export verify` judges parity: against the embedding's own scale
        scale = max(1.0, float(np.abs(reference).max()))
    finally:
        torch.set_num_threads(previous)
    return {
        "threads": threads,
        "batch": 8,
        "torch_ms_per_image": round(1000 * torch_s / 8, 2),
        "ort_ms_per_image": round(1000 * ort_s / 8, 2),
        "ort_speedup": round(torch_s / ort_s, 3),
        "max_abs_diff": diff,
        "max_rel_diff": diff / scale,
        "parity_limit": PARITY_TOLERANCE,
    }
