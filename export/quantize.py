"""int8 copies of ``backbone.onnx`` (onnxruntime.quantization): static QDQ, and dynamic for comparison.

Static QDQ (``quantize_backbone_static``): weights int8 per output channel,
activations uint8 with ranges calibrated (MinMax) on real CT slices given as
model input; QuantizeLinear/DequantizeLinear pairs around every Conv, which
onnxruntime fuses into integer convolutions (VNNI where the CPU has it). The
first Conv (3 input channels: integer kernels gain little there) and the last
(the embedding's own scale) stay float: ``ftl-bench perf`` measured both kept
float as the closer embedding at nearly the same speed. The harmoniser before
the network (``export/harmonise.py``) stays float whole (``kept_float_nodes``).

Dynamic (``quantize_backbone``): int8 weights, activations quantized on the fly
(ConvInteger); smaller but slower than fp32 on this CPU, kept as the
alternative ``ftl-bench perf`` measures static QDQ against.
"""

from __future__ import annotations

import os
import tempfile
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


def kept_float_nodes(model_path: Path) -> list[str]:
    """Nodes static QDQ keeps float: every node of the harmoniser (``export/harmonise.py``:
    its blur and per-image standardising act on the raw input, where rounding is amplified
    by the standardising) and the first and last Conv of the network itself, in graph order."""
    nodes = onnx.load(str(model_path)).graph.node
    harmoniser = [n.name for n in nodes if n.name.startswith(HARMONISER_SCOPE)]
    network = [n.name for n in nodes if n.op_type == "Conv" and n.name not in harmoniser]
    return sorted({*harmoniser, *([network[0], network[-1]] if network else [])})


def quantize_backbone_static(
    source: str | os.PathLike,
    out: str | os.PathLike,
    calibration: np.ndarray,
    keep_ends_float: bool = True,
) -> dict:
    """Write a static QDQ int8 copy of ``source`` to ``out``, calibrated on ``calibration``
    (``float32 [N, 3, S, S]`` model input of real slices); returns what was done, for a manifest."""
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
        kept_float = kept_float_nodes(prepared) if keep_ends_float else []
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
