"""fp32 vs int8 backbones: speed in turns, per-op profiles, fidelity and macro-F1 on covid-ct.

The int8 copies are static QDQ (``quantize_backbone_static`` as ``ftl-export
build --int8`` writes it, calibrated on every CQ500 slice, and a variant with
every node quantized) and dynamic (``quantize_backbone``, the earlier try).
Accuracy (``int8_accuracy``): the embeddings of every covid-ct image from
each static backbone against fp32's (cosine, relative error: no split
noise), and macro-F1 over 30 group splits, each with its linear head trained
on its own backbone's embeddings of the training side; the goal's figure is
the mean paired drop with its 95% interval."""

from __future__ import annotations

import json
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import onnxruntime as ort

from ftlct.bench.perf.int8_accuracy import SPLITS, fidelity, multi_split_drop
from ftlct.bench.perf.measure import goal, interleaved, rate, ratio
from ftlct.bench.perf.model_figures import COVID_CT

EMBED_BATCH = 16
WORK = 32
STATIC = "int8 static QDQ"
EVERY_NODE = "int8 static QDQ, every node"
DROP_GOAL = 0.01


def _session(path: Path, threads: int, profile_dir: Path | None = None) -> ort.InferenceSession:
    from ftlct.agent.inference.engine import session_options

    options = session_options(threads)
    if profile_dir is not None:
        options.enable_profiling = True
        options.profile_file_prefix = str(profile_dir / "ort")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _embed(session: ort.InferenceSession, images: np.ndarray) -> np.ndarray:
    name = session.get_inputs()[0].name
    return np.concatenate(
        [
            session.run(None, {name: np.ascontiguousarray(images[i : i + EMBED_BATCH])})[0]
            for i in range(0, len(images), EMBED_BATCH)
        ]
    )


def op_profile(path: Path, images: np.ndarray, threads: int, runs: int = 3) -> dict:
    """Milliseconds per batch by operator type (onnxruntime's own profiler), largest first."""
    with tempfile.TemporaryDirectory(prefix="ftlct-ortprof-") as tmp:
        session = _session(path, threads, Path(tmp))
        name = session.get_inputs()[0].name
        batch = np.ascontiguousarray(images[:EMBED_BATCH])
        session.run(None, {name: batch})
        for _ in range(runs):
            session.run(None, {name: batch})
        events = json.loads(Path(session.end_profiling()).read_text())
    per_op: dict[str, float] = defaultdict(float)
    for event in events:
        args = event.get("args", {})
        if event.get("cat") == "Node" and event.get("name", "").endswith("_kernel_time"):
            per_op[args.get("op_name", "?")] += event.get("dur", 0) / 1000.0
    total = sum(per_op.values())
    rows = sorted(per_op.items(), key=lambda kv: -kv[1])
    return {
        "batch": len(batch),
        "ms_per_batch": round(total / (runs + 1), 2),
        "by_op_ms": {op: round(ms / (runs + 1), 2) for op, ms in rows[:8]},
    }


def calibration_inputs(model, cq500_files: list[Path]) -> np.ndarray:
    """Model inputs to calibrate on: every CQ500 slice given, CT phantoms where there are none.

    Nothing of covid-ct: its images are the test sides of the splits scored, and a
    federation's int8 backbone is calibrated once, on CT slices of its own, for every site.
    """
    from ftlct.export.preprocessing import preprocess_file, to_model_input
    from ftlct.export.verify import ct_phantom

    parts = [preprocess_file(f, model.preprocessing) for f in cq500_files]
    if not parts:
        parts.append(to_model_input([ct_phantom(seed=s) for s in range(16)], model.preprocessing))
    return np.concatenate(parts).astype(np.float32)


def _covid_inputs(model, quick: bool):
    """Model input of every covid-ct image (every 4th when quick), their labels and groups."""
    from ftlct.bench.dataset import load_dataset
    from ftlct.bench.views import representative_slice
    from ftlct.export.preprocessing import to_model_input

    data = load_dataset(COVID_CT)
    chosen = np.arange(len(data))[:: 4 if quick else 1]
    x = to_model_input([representative_slice(data.file(i)) for i in chosen], model.preprocessing)
    return x, data.labels[chosen], tuple(data.groups[i] for i in chosen)


def accuracy(model, sessions: dict[str, ort.InferenceSession], quick: bool) -> dict:
    """Fidelity of each int8 backbone's embeddings of every covid-ct image to fp32's, and the
    static QDQ backbone's macro-F1 drop over group splits (``int8_accuracy``)."""
    x, labels, groups = _covid_inputs(model, quick)
    embeddings = {name: _embed(s, x) for name, s in sessions.items()}
    reference = embeddings.pop("fp32")
    n_splits = 3 if quick else SPLITS
    return {
        "images": len(x),
        "fidelity": {name: fidelity(e, reference) for name, e in embeddings.items()},
        "multi_split": {
            name: multi_split_drop(reference, embeddings[name], labels, groups, n_splits)
            for name in (STATIC,)  # the variant's fidelity says enough; its F1 costs minutes
        },
    }


def int8_section(
    model,
    work: Path,
    inputs: np.ndarray,
    calibration: np.ndarray,
    threads: int,
    repeats: int,
    quick: bool,
) -> dict:
    """Every int8 figure and the goal: static QDQ >= 1.5x fp32 with macro-F1 drop <= 0.01."""
    from ftlct.export.int8_backbone import float_backbone_path
    from ftlct.export.quantize import quantize_backbone, quantize_backbone_static

    source = float_backbone_path(model)  # a model built --int8 is measured from its float file
    paths = {"fp32": source}
    paths[STATIC] = work / "backbone-int8-static.onnx"
    done = quantize_backbone_static(source, paths[STATIC], calibration)
    paths[EVERY_NODE] = work / "backbone-int8-static-all.onnx"
    quantize_backbone_static(source, paths[EVERY_NODE], calibration, keep_float=False)
    paths["int8 dynamic"] = quantize_backbone(source, work / "backbone-int8-dyn.onnx")
    images = np.ascontiguousarray(np.resize(inputs, (WORK, *inputs.shape[1:])), np.float32)
    sessions = {name: _session(path, threads) for name, path in paths.items()}
    samples = interleaved(
        {name: (lambda s=s: _embed(s, images)) for name, s in sessions.items()}, repeats
    )
    speed = {name: rate(s, WORK, "images/s") for name, s in samples.items()}
    speedup = ratio(speed[STATIC]["median"], speed["fp32"]["median"])
    section = {
        "threads": threads,
        "batch": EMBED_BATCH,
        "quantization": done,
        "speed": speed,
        "speedup_vs_fp32": {n: ratio(speed[n]["median"], speed["fp32"]["median"]) for n in speed},
        "bytes": {name: path.stat().st_size for name, path in paths.items()},
        "profile": {
            name: op_profile(paths[name], images, threads)
            for name in ("fp32", STATIC, "int8 dynamic")
        },
    }
    goals = [goal("int8 speed", speedup, 1.5, at_least=True, what="static QDQ / fp32 images/s")]
    if COVID_CT.is_dir():
        scored = {name: sessions[name] for name in ("fp32", STATIC, EVERY_NODE)}
        section["accuracy"] = accuracy(model, scored, quick)
        drop = section["accuracy"]["multi_split"][STATIC]["drop"]["int8 sites"]
        close = section["accuracy"]["fidelity"][STATIC]
        low, high = drop["ci95"]
        goals.append(
            goal(
                "int8 F1 drop",
                drop["mean"],
                DROP_GOAL,
                at_least=False,
                what=f"macro-F1 fp32 - int8, mean over {drop['n']} covid-ct splits, each with "
                f"its head trained on its own backbone's embeddings (95% interval "
                f"[{low:+.3f}, {high:+.3f}]); embeddings of all {close['images']} images: "
                f"cosine to fp32 mean {close['cosine_mean']:.4f}, min {close['cosine_min']:.4f}, "
                f"relative error mean {close['rel_error_mean']:.3f}",
            )
        )
    else:
        section["accuracy"] = {"skipped": f"{COVID_CT} absent"}
    section["goals"] = goals
    return section
