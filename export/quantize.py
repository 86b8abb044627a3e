"""Dynamic int8 quantization of ``backbone.onnx`` (onnxruntime.quantization), for measurement.

Weights of every Conv become 8-bit (activations are quantized on the fly:
ConvInteger), which makes the file about a quarter of the fp32 size. Whether it
is also faster depends on the CPU's integer kernels, and the embeddings drift:
``ftl-bench perf`` reports both, so nobody has to guess. The model directory
contract is unchanged; nothing in the product uses the int8 backbone yet.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from onnxruntime.quantization import QuantType, quantize_dynamic
from onnxruntime.quantization.shape_inference import quant_pre_process

WEIGHT_TYPES = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}


def quantize_backbone(
    source: str | os.PathLike, out: str | os.PathLike, weight_type: str = "uint8"
) -> Path:
    """Write an int8 dynamically-quantized copy of the ONNX model ``source`` to ``out``."""
    if weight_type not in WEIGHT_TYPES:
        raise ValueError(
            f"weight_type must be one of {', '.join(WEIGHT_TYPES)}, got {weight_type!r}"
        )
    source, out = Path(source), Path(out)
    if not source.is_file():
        raise FileNotFoundError(f"{source}: no such ONNX file")
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
