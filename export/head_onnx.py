"""Head weights -> ``head.onnx`` with onnx helpers and numpy only.

The edge agent swaps heads when a new global model arrives; it must do so on a
box that never imports torch, so the head graph is built here from the arrays
(``dense.{i}.weight`` [out, in], ``dense.{i}.bias`` [out]): Gemm, ReLU, Gemm...
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import onnx

HEAD_KINDS = ("linear", "mlp")
INPUT_NAME = "embedding"
OUTPUT_NAME = "logits"
OPSET = 17
_KEY = re.compile(r"^dense\.(\d+)\.(weight|bias)$")


class HeadWeightsError(ValueError):
    """Head arrays that do not form a dense stack (missing layers, bad shapes, NaN...)."""


def head_layers(arrays: dict[str, np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Validated ``[(weight, bias), ...]`` in layer order."""
    found: dict[int, dict[str, np.ndarray]] = {}
    for key, value in arrays.items():
        match = _KEY.match(key)
        if not match:
            raise HeadWeightsError(f"unexpected head tensor {key!r}")
        found.setdefault(int(match.group(1)), {})[match.group(2)] = np.asarray(value)
    if not found or sorted(found) != list(range(len(found))):
        raise HeadWeightsError(f"head layers must be numbered 0..n-1, got {sorted(found)}")
    layers = []
    width = None
    for index in range(len(found)):
        layer = found[index]
        if set(layer) != {"weight", "bias"}:
            raise HeadWeightsError(f"head layer {index} needs weight and bias")
        weight, bias = layer["weight"], layer["bias"]
        if weight.ndim != 2 or bias.shape != (weight.shape[0],):
            raise HeadWeightsError(
                f"head layer {index}: weight {weight.shape} and bias {bias.shape} do not fit"
            )
        if width is not None and weight.shape[1] != width:
            raise HeadWeightsError(
                f"head layer {index} takes {weight.shape[1]} inputs, previous gives {width}"
            )
        if not (np.isfinite(weight).all() and np.isfinite(bias).all()):
            raise HeadWeightsError(f"head layer {index} has non-finite values")
        width = weight.shape[0]
        layers.append((weight.astype(np.float32), bias.astype(np.float32)))
    return layers


def head_kind(arrays: dict[str, np.ndarray]) -> str:
    return "linear" if len(head_layers(arrays)) == 1 else "mlp"


def head_onnx_model(arrays: dict[str, np.ndarray], name: str = "ftlct_head") -> onnx.ModelProto:
    """An ONNX graph ``embedding [N, D] -> logits [N, C]`` with the given weights."""
    # onnx costs ~20 MB of resident memory: imported when a head is written, not by
    # every agent that only serves one.
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    layers = head_layers(arrays)
    nodes, initializers = [], []
    current = INPUT_NAME
    for index, (weight, bias) in enumerate(layers):
        w_name, b_name = f"dense.{index}.weight", f"dense.{index}.bias"
        initializers += [
            numpy_helper.from_array(weight, w_name),
            numpy_helper.from_array(bias, b_name),
        ]
        last = index == len(layers) - 1
        out = OUTPUT_NAME if last else f"dense_{index}"
        nodes.append(
            helper.make_node(
                "Gemm", [current, w_name, b_name], [out], transB=1, name=f"gemm_{index}"
            )
        )
        current = out
        if not last:
            nodes.append(helper.make_node("Relu", [out], [f"relu_{index}"], name=f"relu_{index}"))
            current = f"relu_{index}"
    graph = helper.make_graph(
        nodes,
        name,
        [
            helper.make_tensor_value_info(
                INPUT_NAME, TensorProto.FLOAT, ["batch", layers[0][0].shape[1]]
            )
        ],
        [
            helper.make_tensor_value_info(
                OUTPUT_NAME, TensorProto.FLOAT, ["batch", layers[-1][0].shape[0]]
            )
        ],
        initializers,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="ftl-ct"
    )
    model.ir_version = 8  # readable by every onnxruntime the project supports
    onnx.checker.check_model(model)
    return model


def head_onnx_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    return head_onnx_model(arrays).SerializeToString()


def numpy_head_logits(arrays: dict[str, np.ndarray], embedding: np.ndarray) -> np.ndarray:
    """Reference forward pass in numpy (used for gating and tests)."""
    x = np.asarray(embedding, dtype=np.float32)
    layers = head_layers(arrays)
    for index, (weight, bias) in enumerate(layers):
        x = x @ weight.T + bias
        if index < len(layers) - 1:
            x = np.maximum(x, 0.0)
    return x


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)
