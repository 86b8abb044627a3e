"""fp32 vs int8 backbones: speed in turns, per-op profiles, and macro-F1 on the covid-ct test split.

The int8 copies are static QDQ (``quantize_backbone_static``, calibrated on CT
slices of the *training* side of the split plus CQ500 slices; the first and
last Conv float, as ``ftl-export build --int8`` writes it, and a variant with
every Conv quantized) and dynamic (``quantize_backbone``, the earlier try).
The test split is the experiment's (``holdout_split(fraction 0.2, seed 0)``,
group-aware, ~149 images): a linear head is trained on fp32 embeddings of the
training side and scored on test embeddings from each backbone; a second head
trained on the int8 embeddings shows what a federation running the int8
backbone would get. The F1 difference carries a paired bootstrap interval
(one split of ~150 images has SE ~0.035 F1 on its own).
"""

from __future__ import annotations

import json
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import onnxruntime as ort

from ftlct.bench.perf.measure import goal, interleaved, rate, ratio
from ftlct.bench.perf.model_figures import COVID_CT

EMBED_BATCH = 16
WORK = 32


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


def _covid_inputs(model, quick: bool):
    from ftlct.bench.dataset import load_dataset
    from ftlct.bench.splits import holdout_split
    from ftlct.bench.views import representative_slice
    from ftlct.export.preprocessing import to_model_input

    data = load_dataset(COVID_CT)
    train, test = holdout_split(data.labels, data.groups, 0.2, seed=0)
    if quick:  # a smoke run: a slice of each side
        train, test = train[::8], test[::3]
    wanted = np.concatenate([train, test])
    x = to_model_input([representative_slice(data.file(i)) for i in wanted], model.preprocessing)
    return data, x[: len(train)], data.labels[train], x[len(train) :], data.labels[test]


def calibration_inputs(model, cq500_files: list[Path], covid_count: int = 64) -> np.ndarray:
    """Model inputs to calibrate on: covid-ct slices of the split's *training* side and every
    6th CQ500 slice; CT phantoms where neither data set is present."""
    from ftlct.export.preprocessing import preprocess_file, to_model_input
    from ftlct.export.verify import ct_phantom

    parts = []
    if COVID_CT.is_dir():
        from ftlct.bench.dataset import load_dataset
        from ftlct.bench.splits import holdout_split
        from ftlct.bench.views import representative_slice

        data = load_dataset(COVID_CT)
        train, _ = holdout_split(data.labels, data.groups, 0.2, seed=0)
        chosen = np.random.default_rng(0).choice(train, min(covid_count, len(train)), replace=False)
        parts.append(
            to_model_input(
                [representative_slice(data.file(i)) for i in chosen], model.preprocessing
            )
        )
    parts += [preprocess_file(f, model.preprocessing) for f in cq500_files[::6]]
    if not parts:
        parts.append(to_model_input([ct_phantom(seed=s) for s in range(16)], model.preprocessing))
    return np.concatenate(parts).astype(np.float32)


def _bootstrap_f1_difference(y, a, b, n_classes, rounds=1000) -> list[float]:
    from ftlct.export.metrics import classification_metrics

    rng = np.random.default_rng(0)
    diffs = []
    for _ in range(rounds):
        pick = rng.integers(0, len(y), len(y))
        fa = classification_metrics(y[pick], a[pick], n_classes).f1
        fb = classification_metrics(y[pick], b[pick], n_classes).f1
        diffs.append(fb - fa)
    return [round(float(np.percentile(diffs, 2.5)), 4), round(float(np.percentile(diffs, 97.5)), 4)]


def accuracy(model, sessions: dict[str, ort.InferenceSession], quick: bool) -> dict:
    from ftlct.agent.training.local_training import LocalTrainConfig, train_head
    from ftlct.export.head_onnx import numpy_head_logits
    from ftlct.export.heads import head_to_arrays, make_head
    from ftlct.export.metrics import classification_metrics

    data, x_train, y_train, x_test, y_test = _covid_inputs(model, quick)
    n_classes = len(data.classes)
    config = LocalTrainConfig(epochs=30, lr=3e-3, val_fraction=0.0)

    def head_on(embeddings):
        start = head_to_arrays(make_head("linear", n_classes))
        return train_head(start, embeddings, y_train, n_classes, config).weights

    fp32_head = head_on(_embed(sessions["fp32"], x_train))
    test = {name: _embed(s, x_test) for name, s in sessions.items()}
    predictions = {name: numpy_head_logits(fp32_head, e).argmax(1) for name, e in test.items()}
    result = {
        "split": f"covid-ct holdout_split(0.2, seed 0): {len(y_train)} train / {len(y_test)} test"
        + (" (quick: a subset)" if quick else ""),
        "f1_fp32_head": {
            name: round(classification_metrics(y_test, p, n_classes).f1, 4)
            for name, p in predictions.items()
        },
        "agreement_with_fp32": {
            name: round(float(np.mean(p == predictions["fp32"])), 4)
            for name, p in predictions.items()
        },
        "cosine_to_fp32": {},
    }
    for name, e in test.items():
        cos = (e * test["fp32"]).sum(1) / (
            np.linalg.norm(e, axis=1) * np.linalg.norm(test["fp32"], axis=1)
        )
        result["cosine_to_fp32"][name] = {
            "min": round(float(cos.min()), 4),
            "mean": round(float(cos.mean()), 4),
        }
    static = "int8 static QDQ"
    own_head = head_on(_embed(sessions[static], x_train))
    own = numpy_head_logits(own_head, test[static]).argmax(1)
    result["f1_int8_trained_head"] = round(classification_metrics(y_test, own, n_classes).f1, 4)
    result["f1_drop_95ci"] = _bootstrap_f1_difference(
        y_test, predictions[static], predictions["fp32"], n_classes
    )
    return result


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
    paths["int8 static QDQ"] = work / "backbone-int8-static.onnx"
    done = quantize_backbone_static(source, paths["int8 static QDQ"], calibration)
    paths["int8 static QDQ, every Conv"] = work / "backbone-int8-static-all.onnx"
    quantize_backbone_static(source, paths["int8 static QDQ, every Conv"], calibration, False)
    paths["int8 dynamic"] = quantize_backbone(source, work / "backbone-int8-dyn.onnx")
    images = np.ascontiguousarray(np.resize(inputs, (WORK, *inputs.shape[1:])), np.float32)
    sessions = {name: _session(path, threads) for name, path in paths.items()}
    samples = interleaved(
        {name: (lambda s=s: _embed(s, images)) for name, s in sessions.items()}, repeats
    )
    speed = {name: rate(s, WORK, "images/s") for name, s in samples.items()}
    speedup = ratio(speed["int8 static QDQ"]["median"], speed["fp32"]["median"])
    section = {
        "threads": threads,
        "batch": EMBED_BATCH,
        "quantization": done,
        "speed": speed,
        "speedup_vs_fp32": {n: ratio(speed[n]["median"], speed["fp32"]["median"]) for n in speed},
        "bytes": {name: path.stat().st_size for name, path in paths.items()},
        "profile": {
            name: op_profile(paths[name], images, threads)
            for name in ("fp32", "int8 static QDQ", "int8 dynamic")
        },
    }
    goals = [goal("int8 speed", speedup, 1.5, at_least=True, what="static QDQ / fp32 images/s")]
    if COVID_CT.is_dir():
        section["accuracy"] = accuracy(model, sessions, quick)
        f1 = section["accuracy"]["f1_fp32_head"]
        drop = round(f1["fp32"] - f1["int8 static QDQ"], 4)
        goals.append(
            goal(
                "int8 F1 drop", drop, 0.01, at_least=False, what="macro-F1 fp32 - int8 (same head)"
            )
        )
    else:
        section["accuracy"] = {"skipped": f"{COVID_CT} absent"}
    section["goals"] = goals
    return section
