"""``ftl-bench perf``: model-level performance, every comparison measured side by side in one run.

- backbone throughput (onnxruntime, as the agent runs it) by batch size and threads;
- preprocessing rate on real CQ500 DICOM (JPEG Lossless decode, HU, 3 windows, resize);
- head swap: write the new head's model directory, then the agent's ``InferenceEngine.swap``;
- fp32 vs dynamically-quantized int8 backbone (``ftlct.export.quantize``): speed, size,
  embedding drift and the F1 drift of a head trained on fp32 embeddings (covid-ct);
- torch vs onnxruntime for the same embeddings.

Medians of repeated runs after one warm-up; the machine may be shared, so the
ratios (measured back to back) say more than the absolute numbers.
"""

from __future__ import annotations

import os
import platform
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


def _model(work: Path):
    from ftlct.export.build import build_model_dir
    from ftlct.export.model_dir import ModelDir
    from ftlct.export.weights import resolve_weights

    path = work / "model"
    if (path / "manifest.json").is_file():
        model = ModelDir.load(path)
        if not model.problems():
            return model
    return build_model_dir(path, resolve_weights(None), ["normal", "abnormal"], INPUT_SIZE)


def _real_inputs(model, count: int) -> tuple[np.ndarray, str]:
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


def backbone_throughput(
    model, inputs: np.ndarray, thread_counts: list[int], repeats: int
) -> list[dict]:
    from ftlct.agent.inference.engine import load_snapshot

    rows = []
    for threads in thread_counts:
        snapshot = load_snapshot(model.path, threads)
        for batch in (1, 8, 32):
            x = np.ascontiguousarray(inputs[:batch])
            if len(x) < batch:
                x = np.resize(inputs, (batch, *inputs.shape[1:])).astype(np.float32)
            seconds = timed(lambda x=x, s=snapshot: s.embed(x), repeats)
            rows.append(
                {
                    "threads": threads,
                    "batch": batch,
                    "images_per_s": round(batch / seconds, 2),
                    "ms_per_image": round(1000 * seconds / batch, 2),
                }
            )
    return rows


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


def _covid_subset(count: int):
    from ftlct.bench.dataset import load_dataset
    from ftlct.bench.splits import holdout_split

    data = load_dataset(COVID_CT)
    rng = np.random.default_rng(0)
    chosen = np.sort(rng.choice(len(data), size=min(count, len(data)), replace=False))
    labels = data.labels[chosen]
    groups = tuple(data.groups[i] for i in chosen)
    train, test = holdout_split(labels, groups, 0.5, seed=0)
    return data, chosen, labels, train, test


def int8_comparison(
    model, work: Path, inputs: np.ndarray, threads: int, repeats: int, count: int
) -> dict:
    import onnxruntime as ort

    from ftlct.agent.inference.engine import session_options
    from ftlct.export.quantize import quantize_backbone

    int8_path = quantize_backbone(model.backbone_path, work / "backbone-int8.onnx")
    sessions = {
        name: ort.InferenceSession(
            str(path), session_options(threads), providers=["CPUExecutionProvider"]
        )
        for name, path in (("fp32", model.backbone_path), ("int8", int8_path))
    }

    def embed(name: str, x: np.ndarray) -> np.ndarray:
        session = sessions[name]
        out = [session.run(None, {"image": x[i : i + 16]})[0] for i in range(0, len(x), 16)]
        return np.concatenate(out)

    batch = np.ascontiguousarray(inputs[:8])
    speed = {name: 8 / timed(lambda n=name: embed(n, batch), repeats) for name in sessions}
    fp32, int8 = embed("fp32", inputs), embed("int8", inputs)
    cosine = (fp32 * int8).sum(1) / (np.linalg.norm(fp32, axis=1) * np.linalg.norm(int8, axis=1))
    result = {
        "threads": threads,
        "fp32_images_per_s": round(speed["fp32"], 2),
        "int8_images_per_s": round(speed["int8"], 2),
        "int8_speedup": round(speed["int8"] / speed["fp32"], 3),
        "fp32_bytes": model.backbone_path.stat().st_size,
        "int8_bytes": int8_path.stat().st_size,
        "embedding_cosine_min": round(float(cosine.min()), 5),
        "embedding_cosine_mean": round(float(cosine.mean()), 5),
        "embedding_max_abs_diff": round(float(np.abs(fp32 - int8).max()), 5),
    }
    if COVID_CT.is_dir():
        result["accuracy_drift"] = _f1_drift(model, embed, count)
    else:
        result["accuracy_drift"] = {"skipped": f"{COVID_CT} absent"}
    return result


def _f1_drift(model, embed, count: int) -> dict:
    """A head trained on fp32 embeddings, scored on held-out images embedded by fp32 and by int8."""
    from ftlct.agent.training.local_training import LocalTrainConfig, train_head
    from ftlct.agent.training.metrics import classification_metrics
    from ftlct.bench.views import representative_slice
    from ftlct.export.head_onnx import numpy_head_logits
    from ftlct.export.heads import head_to_arrays, make_head
    from ftlct.export.preprocessing import to_model_input

    data, chosen, labels, train, test = _covid_subset(count)
    x = to_model_input([representative_slice(data.file(i)) for i in chosen], model.preprocessing)
    head = train_head(
        head_to_arrays(make_head("linear", len(data.classes))),
        embed("fp32", x[train]),
        labels[train],
        len(data.classes),
        LocalTrainConfig(epochs=30, lr=3e-3, val_fraction=0.0),
    ).weights
    predictions = {
        name: numpy_head_logits(head, embed(name, x[test])).argmax(axis=1)
        for name in ("fp32", "int8")
    }
    scores = {
        name: classification_metrics(labels[test], p, len(data.classes))
        for name, p in predictions.items()
    }
    return {
        "images": f"{len(train)} train / {len(test)} test of a random covid-ct subset (group-aware split)",
        "fp32_f1": round(scores["fp32"].f1, 4),
        "int8_f1": round(scores["int8"].f1, 4),
        "fp32_accuracy": round(scores["fp32"].accuracy, 4),
        "int8_accuracy": round(scores["int8"].accuracy, 4),
        "prediction_agreement": round(
            float(np.mean(predictions["fp32"] == predictions["int8"])), 4
        ),
    }


def torch_vs_ort(model, inputs: np.ndarray, threads: int, repeats: int) -> dict:
    import torch
    from safetensors.torch import load_file

    from ftlct.agent.inference.engine import load_snapshot
    from ftlct.export.backbones import pooled_backbone_from_manifest

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
        diff = float(np.abs(run_torch() - snapshot.embed(batch)).max())
    finally:
        torch.set_num_threads(previous)
    return {
        "threads": threads,
        "batch": 8,
        "torch_ms_per_image": round(1000 * torch_s / 8, 2),
        "ort_ms_per_image": round(1000 * ort_s / 8, 2),
        "ort_speedup": round(torch_s / ort_s, 3),
        "max_abs_diff": diff,
    }


def run_perf(out: Path, quick: bool = False, thread_counts: list[int] | None = None) -> dict:
    work = Path(out) / "perf-work"
    work.mkdir(parents=True, exist_ok=True)
    thread_counts = thread_counts or [1, 2]
    repeats = 3 if quick else 7
    model = _model(work)
    inputs, source = _real_inputs(model, 32)
    started = time.perf_counter()
    document = {
        "machine": {
            "python": platform.python_version(),
            "cpus": len(os.sched_getaffinity(0))
            if hasattr(os, "sched_getaffinity")
            else os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
            "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        },
        "quick": quick,
        "input": f"{INPUT_SIZE} px, {source}",
        "backbone_throughput": backbone_throughput(model, inputs, thread_counts, repeats),
        "preprocessing": preprocessing_rate(model, 40 if quick else 239),
        "head_swap": head_swap(model, work, repeats),
        "int8": int8_comparison(
            model, work, inputs, max(thread_counts), repeats, 80 if quick else 300
        ),
        "torch_vs_ort": torch_vs_ort(model, inputs, max(thread_counts), repeats),
    }
    document["wall_s"] = round(time.perf_counter() - started, 1)
    return document


def perf_markdown(document: dict) -> str:
    machine = document["machine"]
    lines = [
        "# ftl-bench perf",
        "",
        f"{machine['cpus']} CPUs ({machine['processor']}), load average at start "
        f"{machine['load_average']}; input {document['input']}; wall {document['wall_s']} s"
        + (" (quick)" if document["quick"] else "")
        + ". Shared machine: compare ratios, not absolute numbers.",
        "",
        "## Backbone throughput (onnxruntime, agent session options)",
        "",
        "| threads | batch | images/s | ms/image |",
        "| ---: | ---: | ---: | ---: |",
        *[
            f"| {r['threads']} | {r['batch']} | {r['images_per_s']} | {r['ms_per_image']} |"
            for r in document["backbone_throughput"]
        ],
        "",
    ]
    pre = document["preprocessing"]
    lines += ["## Preprocessing (real CQ500 DICOM)", ""]
    lines += [
        pre.get("skipped")
        or f"{pre['files']} files: {pre['slices_per_s']} slices/s ({pre['ms_per_slice']} ms/slice); {pre['what']}.",
        "",
    ]
    swap = document["head_swap"]
    lines += [
        "## Head swap",
        "",
        f"Write the new model directory {swap['write_model_dir_ms']} ms, engine swap "
        f"{swap['engine_swap_ms']} ms ({swap['what']}).",
        "",
    ]
    q = document["int8"]
    drift = q["accuracy_drift"]
    lines += [
        "## fp32 vs int8 (dynamic quantization of every Conv)",
        "",
        "| | fp32 | int8 |",
        "| --- | ---: | ---: |",
        f"| images/s (batch 8, {q['threads']} threads) | {q['fp32_images_per_s']} | {q['int8_images_per_s']} |",
        f"| file size | {q['fp32_bytes'] / 1e6:.1f} MB | {q['int8_bytes'] / 1e6:.1f} MB |",
    ]
    if "fp32_f1" in drift:
        lines += [
            f"| macro-F1 ({drift['images']}) | {drift['fp32_f1']} | {drift['int8_f1']} |",
            f"| accuracy | {drift['fp32_accuracy']} | {drift['int8_accuracy']} |",
        ]
    lines += [
        "",
        f"int8 speed-up {q['int8_speedup']}x; embedding cosine to fp32 min {q['embedding_cosine_min']}, "
        f"mean {q['embedding_cosine_mean']}; max |diff| {q['embedding_max_abs_diff']}"
        + (
            f"; fp32/int8 predictions agree on {drift['prediction_agreement']:.1%} of test images."
            if "prediction_agreement" in drift
            else f"; accuracy drift: {drift.get('skipped')}."
        ),
        "",
    ]
    t = document["torch_vs_ort"]
    lines += [
        "## torch vs onnxruntime (same backbone, same batch)",
        "",
        f"torch {t['torch_ms_per_image']} ms/image, onnxruntime {t['ort_ms_per_image']} ms/image "
        f"({t['threads']} threads, batch {t['batch']}): onnxruntime is {t['ort_speedup']}x torch; "
        f"max |diff| {t['max_abs_diff']:.2e}.",
    ]
    return "\n".join(lines)
