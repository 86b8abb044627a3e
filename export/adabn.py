"""AdaBN at the edge without torch: re-estimate the backbone's batch-norm statistics on a site's slices.

A scanner's noise, kernel and display curve shift the activations every batch
norm of the frozen ImageNet backbone normalises; re-estimating the running
mean and variance on the site's own unlabelled slices (AdaBN, Li et al.
2016; FedBN keeps BN local for the same reason) undoes that shift for the
whole network. The exported graph has its batch norms folded into the
convolutions (fast, and no BatchNormalization node left), so this module
works on the folded graph with the map the build wrote
(``manifest.backbone.batch_norm``: Conv node -> batch norm in
``backbone.safetensors``):

1. ``statistics_graph``: a copy of ``backbone.onnx`` in which each adapted
   convolution's output is normalised by its own batch statistics (batch norm
   in training mode, written as ReduceMean / Sub / Mul / Add on the folded
   output) and those per-channel statistics are graph outputs;
2. ``estimate``: runs it batch by batch with onnxruntime and averages the
   batch statistics (PyTorch's cumulative ``momentum=None`` estimate, unbiased
   variance), converted back to the unfolded batch norm's input;
3. ``adapt_model_dir``: re-folds the new statistics into the Conv
   initializers, writes the site's ``backbone.onnx`` and ``backbone.safetensors``
   (so ``ftl-export verify`` still checks parity) and records the adaptation
   in the manifest (``backbone.adaptation``, with the base backbone's hash).

Label skew biases the statistics: a site whose slices are mostly one class
would normalise that class's look away. Two limits: ``up_to_stage`` adapts
early stages only (acquisition differences live there; class content lives
later), and ``balanced_sample`` draws the slices evenly over the labels a site
has. numpy, onnx and onnxruntime only.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper
from safetensors.numpy import load_file, save_file

from ftlct.export.files import atomic_write_bytes, atomic_write_text, sha256_file
from ftlct.export.model_dir import MANIFEST, ModelDir, ModelDirError


class AdaptationError(ValueError):
    """A model directory that cannot be adapted (no batch-norm map, no slices, bad options)."""


def _entries(model: ModelDir, up_to_stage: int | None) -> list[dict]:
    entries = model.manifest["backbone"].get("batch_norm")
    if not entries:
        raise AdaptationError(
            f"{model.path}: manifest has no backbone.batch_norm map (built before AdaBN "
            "support); rebuild it with ftl-export build"
        )
    chosen = [e for e in entries if up_to_stage is None or e["stage"] <= up_to_stage]
    if not chosen:
        raise AdaptationError(f"no batch norm at or before stage {up_to_stage}")
    return chosen


def _bn_params(state: dict, entry: dict) -> tuple[np.ndarray, ...]:
    bn = entry["batch_norm"]
    gamma = state[f"{bn}.weight"].astype(np.float64)
    beta = state[f"{bn}.bias"].astype(np.float64)
    mean = state[f"{bn}.running_mean"].astype(np.float64)
    var = state[f"{bn}.running_var"].astype(np.float64)
    return gamma, beta, mean, var


def statistics_graph(graph_bytes: bytes, entries: list[dict], state: dict) -> onnx.ModelProto:
    """The backbone with train-mode batch norm after each listed Conv, its statistics as outputs."""
    model = onnx.load_from_string(graph_bytes)
    graph = model.graph
    by_name = {n.name: n for n in graph.node}
    nodes = list(graph.node)
    extra_nodes = []
    for index, entry in enumerate(entries):
        node = by_name.get(entry["conv_node"])
        if node is None:
            raise AdaptationError(f"backbone.onnx has no node {entry['conv_node']}")
        gamma, beta, _, var = _bn_params(state, entry)
        a = gamma / np.sqrt(var + entry["eps"])  # the folded scale
        y = node.output[0]
        p = f"adabn{index}"
        consts = {
            f"{p}_gain": np.abs(gamma),
            f"{p}_eps": entry["eps"] * a**2,
            f"{p}_beta": beta,
        }
        for name, value in consts.items():
            graph.initializer.append(
                numpy_helper.from_array(value.astype(np.float32).reshape(1, -1, 1, 1), name)
            )
        # y' = a z + c is the folded output; train-mode BN of z is
        # |gamma| (y' - mean_y) / sqrt(var_y + eps a^2) + beta
        extra_nodes += [
            helper.make_node("ReduceMean", [y], [f"{p}_mean"], axes=[0, 2, 3], keepdims=1),
            helper.make_node("Sub", [y, f"{p}_mean"], [f"{p}_centred"]),
            helper.make_node("Mul", [f"{p}_centred", f"{p}_centred"], [f"{p}_sq"]),
            helper.make_node("ReduceMean", [f"{p}_sq"], [f"{p}_var"], axes=[0, 2, 3], keepdims=1),
            helper.make_node("Add", [f"{p}_var", f"{p}_eps"], [f"{p}_vare"]),
            helper.make_node("Sqrt", [f"{p}_vare"], [f"{p}_std"]),
            helper.make_node("Div", [f"{p}_centred", f"{p}_std"], [f"{p}_norm"]),
            helper.make_node("Mul", [f"{p}_norm", f"{p}_gain"], [f"{p}_scaled"]),
            helper.make_node("Add", [f"{p}_scaled", f"{p}_beta"], [f"{p}_out"]),
        ]
        for other in nodes:  # downstream nodes read the batch-normalised output
            if other is node:
                continue
            for i, name in enumerate(other.input):
                if name == y:
                    other.input[i] = f"{p}_out"
        for output in graph.output:
            if output.name == y:
                raise AdaptationError(f"{y} is a graph output; cannot adapt it")
        for stat in ("mean", "var"):
            graph.output.append(helper.make_tensor_value_info(f"{p}_{stat}", 1, None))
    # keep a topological order: each block of new nodes right after its Conv
    ordered = []
    blocks = {entry["conv_node"]: extra_nodes[9 * i : 9 * i + 9] for i, entry in enumerate(entries)}
    for node in nodes:
        ordered.append(node)
        ordered += blocks.get(node.name, [])
    del graph.node[:]
    graph.node.extend(ordered)
    return model


def estimate(
    model: ModelDir,
    images: Iterable[np.ndarray],
    up_to_stage: int | None = None,
    threads: int = 0,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """batch norm name -> (running_mean, running_var) re-estimated on ``images`` (batches of model input).

    Each batch needs >= 2 slices (a variance of one is undefined); as in
    PyTorch's cumulative estimate, every batch counts once. The variance is the
    biased batch variance (PyTorch's unbiased one differs by n / (n - 1) with n
    = batch x height x width >= 98 here: below 1%, and shrinking with batch).
    """
    entries = _entries(model, up_to_stage)
    state = load_file(str(model.path / model.manifest["backbone"]["weights"]))
    graph = statistics_graph(model.backbone_path.read_bytes(), entries, state)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(
        graph.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    names = [f"adabn{i}_{s}" for i in range(len(entries)) for s in ("mean", "var")]
    input_name = session.get_inputs()[0].name
    sums = [np.zeros(0)] * len(names)
    batches = 0
    for batch in images:
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        if len(batch) < 2:
            continue
        outputs = session.run(names, {input_name: batch})
        for k, value in enumerate(outputs):
            value = value.reshape(-1).astype(np.float64)
            sums[k] = value if not batches else sums[k] + value
        batches += 1
    if not batches:
        raise AdaptationError("no batch of at least 2 slices to estimate statistics on")
    result = {}
    for i, entry in enumerate(entries):
        gamma, beta, mean, var = _bn_params(state, entry)
        a = gamma / np.sqrt(var + entry["eps"])
        c = beta - mean * a
        mean_y, var_y = sums[2 * i] / batches, sums[2 * i + 1] / batches
        live = np.abs(a) > 1e-12  # a dead channel (gamma 0) tells nothing: keep its statistics
        new_mean = np.where(live, (mean_y - c) / np.where(live, a, 1.0), mean)
        new_var = np.where(live, var_y / np.where(live, a, 1.0) ** 2, var)
        result[entry["batch_norm"]] = (new_mean, new_var)
    return result


def balanced_sample(labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """Indices of up to ``per_class`` items of each label present (all of a smaller class)."""
    rng = np.random.default_rng(seed)
    chosen = []
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        chosen.extend(rng.permutation(members)[:per_class].tolist())
    return np.sort(np.asarray(chosen, dtype=np.int64))


def adapt_model_dir(
    model: ModelDir,
    out: str | os.PathLike,
    statistics: dict[str, tuple[np.ndarray, np.ndarray]],
    record: dict,
) -> ModelDir:
    """Write ``out``: ``model`` with ``statistics`` folded into its Conv initializers.

    ``record`` (slices, sampling, stage limit...) goes into
    ``manifest.backbone.adaptation`` with the base backbone's hashes. The head
    files are copied as they are.
    """
    entries = [e for e in model.manifest["backbone"]["batch_norm"] if e["batch_norm"] in statistics]
    if len(entries) != len(statistics):
        raise AdaptationError("statistics name batch norms the manifest does not map")
    weights_name = model.manifest["backbone"]["weights"]
    state = load_file(str(model.path / weights_name))
    graph = onnx.load(str(model.backbone_path))
    initializers = {i.name: i for i in graph.graph.initializer}
    for entry in entries:
        gamma, beta, _, var = _bn_params(state, entry)
        new_mean, new_var = statistics[entry["batch_norm"]]
        eps = entry["eps"]
        w_init, b_init = initializers[entry["weight"]], initializers[entry["bias"]]
        folded = numpy_helper.to_array(w_init).astype(np.float64)
        ratio = np.sqrt(var + eps) / np.sqrt(new_var + eps)  # W'' = W' s / s_new
        new_w = folded * ratio.reshape(-1, *([1] * (folded.ndim - 1)))
        new_b = beta - new_mean * gamma / np.sqrt(new_var + eps)
        w_init.CopyFrom(numpy_helper.from_array(new_w.astype(np.float32), entry["weight"]))
        b_init.CopyFrom(numpy_helper.from_array(new_b.astype(np.float32), entry["bias"]))
        state[f"{entry['batch_norm']}.running_mean"] = new_mean.astype(np.float32)
        state[f"{entry['batch_norm']}.running_var"] = new_var.astype(np.float32)

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)  # the manifest goes last: no manifest, no model
    manifest = json.loads(json.dumps(model.manifest))
    backbone = manifest["backbone"]
    atomic_write_bytes(out / backbone["file"], graph.SerializeToString())
    tmp = out / f".{weights_name}.tmp"
    save_file({k: np.array(v, order="C") for k, v in state.items()}, str(tmp))  # keeps 0-d
    os.replace(tmp, out / weights_name)
    for key in ("file", "weights"):
        name = manifest["head"].get(key)
        if name:
            atomic_write_bytes(out / name, (model.path / name).read_bytes())
    base = model.manifest["backbone"].get("adaptation", {})
    backbone["adaptation"] = {
        "method": "adabn",
        "batch_norms": [e["batch_norm"] for e in entries],
        "up_to_stage": max(e["stage"] for e in entries),
        **record,
        "base_sha256": base.get("base_sha256", model.backbone_sha256),
        "base_weights_sha256": base.get(
            "base_weights_sha256", model.manifest["backbone"].get("weights_sha256")
        ),
    }
    backbone["sha256"] = sha256_file(out / backbone["file"])
    backbone["weights_sha256"] = sha256_file(out / weights_name)
    atomic_write_text(out / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    try:
        return ModelDir.load(out)
    except ModelDirError as exc:  # pragma: no cover - written just above
        raise AdaptationError(str(exc)) from exc
