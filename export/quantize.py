"""int8 copies of ``backbone.onnx`` (onnxruntime.quantization): static QDQ, and dynamic for comparison.

Static QDQ (``quantize_backbone_static``): weights int8 per output channel,
activations uint8 with ranges calibrated (MinMax) on real CT slices given as
model input; QuantizeLinear/DequantizeLinear pairs around every Conv, which
onnxruntime fuses into integer convolutions (VNNI where the CPU has it). Kept
float (``kept_float_nodes``): the harmoniser before the network
(``export/harmonise.py``) whole; the network's first block (the stem Conv and
the first depthwise block: 3 input channels, then 32 channels at half
resolution, where a sweep over every covid-ct image found most of the int8
error of the whole embedding: keeping MobileNetV2's ``features.1`` float took
the mean relative error of the embeddings from 0.125 to 0.093, keeping any
other single stage float changed nothing); the last Conv (the embedding's own
scale); and the embedding's pooling, flatten and concat nodes (quantized, the
concat puts every tap's mean and max on one uint8 scale, and the small
mean-pooled parts lose most: 0.093 -> 0.081). README "Performance" has the
levers measured.

Dynamic (``quantize_backbone``): int8 weights, activations quantized on the fly
(ConvInteger); smaller but slower than fp32 on this CPU, kept as the
alternative ``ftl-bench perf`` measures static QDQ against.
"""

from __future__ import annotations

import os
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from ftlct.export.model_dir import HARMONISER_SCOPE

WEIGHT_TYPES = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
CALIBRATION_BATCH = 8
MIN_CALIBRATION_SLICES = 8


class _Batches(CalibrationDataReader):
    def __init__(self, input_name: str, images: np.ndarray):
        self._batches: Iterator[np.ndarray] = (
            np.ascontiguousarray(images[i : i + CALIBRATION_BATCH], np.float32)
            for i in range(0, len(images), CALIBRATION_BATCH)
        )
        self._name = input_name

    def get_next(self) -> dict | None:
        batch = next(self._batches, None)
        return None if batch is None else {self._name: batch}


def _check_source(source: Path) -> None:
    if not source.is_file():
        raise FileNotFoundError(f"{source}: no such ONNX file")


FIRST_BLOCK_CONVS = 3  # stem, then the first block's depthwise and projection Convs
POOLING_OPS = ("GlobalAveragePool", "GlobalMaxPool", "Flatten", "Concat")


def kept_float_nodes(model_path: Path) -> list[str]:
    """Nodes static QDQ keeps float: every node of the harmoniser (``export/harmonise.py``:
    its blur and per-image standardising act on the raw input, where rounding is amplified
    by the standardising), the network's nodes up to its third Conv (the stem and the first
    block, with their activations), its last Conv, and the embedding's pooling, flatten and
    concat nodes; sorted."""
    nodes = onnx.load(str(model_path)).graph.node
    harmoniser = {n.name for n in nodes if n.name.startswith(HARMONISER_SCOPE)}
    network = [n for n in nodes if n.name not in harmoniser]
    convs = [i for i, n in enumerate(network) if n.op_type == "Conv"]
    if not convs:
        return sorted(harmoniser)
    first_block = network[: convs[:FIRST_BLOCK_CONVS][-1] + 1]
    kept = {n.name for n in first_block if n.op_type != "Constant"}
    kept.add(network[convs[-1]].name)
    kept |= {n.name for n in network if n.op_type in POOLING_OPS}
    return sorted(harmoniser | kept)


def quantize_backbone_static(
    source: str | os.PathLike,
    out: str | os.PathLike,
    calibration: np.ndarray,
    keep_float: bool = True,
) -> dict:
    """Write a static QDQ int8 copy of ``source`` to ``out``, calibrated on ``calibration``
    (``float32 [N, 3, S, S]`` model input of real slices); returns what was done, for a manifest.
    ``keep_float=False`` quantizes every node, harmoniser included (a comparison variant)."""
    source, out = Path(source), Path(out)
    _check_source(source)
    calibration = np.asarray(calibration)
    if calibration.ndim != 4 or len(calibration) < MIN_CALIBRATION_SLICES:
        raise ValueError(
            f"calibration needs >= {MIN_CALIBRATION_SLICES} model inputs [N, 3, S, S], "
            f"got shape {calibration.shape}"
        )
    input_name = onnx.load(str(source), load_external_data=False).graph.input[0].name
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        kept_float = kept_float_nodes(prepared) if keep_float else []
        graph = onnx.load(str(prepared), load_external_data=False).graph
        op_of = {n.name: n.op_type for n in graph.node}
        staged = Path(tmp) / "quantized.onnx"
        quantize_static(
            str(prepared),
            str(staged),
            _Batches(input_name, calibration),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
            calibrate_method=CalibrationMethod.MinMax,
            nodes_to_exclude=kept_float,
        )
        os.replace(staged, out)
    return {
        "method": "static QDQ (onnxruntime.quantization)",
        "weights": "int8, per output channel",
        "activations": "uint8, MinMax-calibrated",
        "kept_float": kept_float,
        "kept_float_ops": dict(sorted(Counter(op_of[name] for name in kept_float).items())),
        "calibration_slices": len(calibration),
    }


def quantize_backbone(
    source: str | os.PathLike, out: str | os.PathLike, weight_type: str = "uint8"
) -> Path:
    """Write an int8 dynamically-quantized copy of the ONNX model ``source`` to ``out``."""
    if weight_type not in WEIGHT_TYPES:
        raise ValueError(
            f"weight_type must be one of {', '.join(WEIGHT_TYPES)}, got {weight_type!r}"
        )
    source, out = Path(source), Path(out)
    _check_source(source)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        # shape inference and graph clean-up first, as onnxruntime recommends
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        staged = Path(tmp) / "quantized.onnx"
        quantize_dynamic(
            str(prepared),
            str(staged),
            op_types_to_quantize=["Conv"],
            weight_type=WEIGHT_TYPES[weight_type],
        )
        os.replace(staged, out)
    return out
