"""Delta codecs: how a site's ``local - global`` tensors are packed into an update body.

- ``fp32``: exact.
- ``fp16``: half the bytes. Round-to-nearest, so per element
  ``|x - x'| <= max(|x| * 2**-11, 2**-25)``; values beyond +-65504 cannot be
  encoded (``ValueError``), clip the delta first.
- ``int8``: a quarter of the bytes. Symmetric per-tensor scale
  ``s = max|x| / 127``, ``q = round(x / s)`` in [-127, 127], ``x' = q * s``, so
  per element ``|x - x'| <= s / 2 = max|x| / 254`` (plus float32 rounding of
  ``x'``, relative 2**-24). The scales travel in the envelope payload.

Decoding always yields float32 arrays.
"""

from __future__ import annotations

import math

import numpy as np

from ftlct.protocol.errors import ProtocolError

CODECS = ("fp32", "fp16", "int8")
FP16_MAX = 65504.0
_WIRE_DTYPE = {"fp32": np.float32, "fp16": np.float16, "int8": np.int8}


def encode_delta(delta: dict[str, np.ndarray], codec: str) -> tuple[dict[str, np.ndarray], dict]:
    """``(tensors for the body, codec parameters for the payload)``."""
    if codec not in CODECS:
        raise ValueError(f"codec must be one of {', '.join(CODECS)}, got {codec!r}")
    tensors: dict[str, np.ndarray] = {}
    scales: dict[str, float] = {}
    for name, value in delta.items():
        value = np.asarray(value, dtype=np.float64)
        if not np.isfinite(value).all():
            raise ValueError(f"delta {name} has non-finite values")
        if codec == "fp32":
            tensors[name] = np.ascontiguousarray(value, dtype=np.float32)
        elif codec == "fp16":
            if value.size and np.abs(value).max() > FP16_MAX:
                raise ValueError(f"delta {name} exceeds the fp16 range (+-{FP16_MAX})")
            tensors[name] = np.ascontiguousarray(value, dtype=np.float16)
        else:
            peak = float(np.abs(value).max()) if value.size else 0.0
            scale = peak / 127.0 if peak > 0 else 1.0
            tensors[name] = np.clip(np.rint(value / scale), -127, 127).astype(np.int8)
            scales[name] = scale
    return tensors, ({"scales": scales} if codec == "int8" else {})


def decode_delta(tensors: dict[str, np.ndarray], codec: str, params: dict) -> dict[str, np.ndarray]:
    """float32 tensors from a body.

    ``ProtocolError``: ``bad_dtype`` if a tensor is not the codec's wire dtype,
    ``malformed`` for an unknown codec or missing/invalid int8 scales.
    """
    if codec not in CODECS:
        raise ProtocolError("malformed", f"unknown delta codec {codec!r}")
    wire = _WIRE_DTYPE[codec]
    scales = _scales(codec, params)
    out = {}
    for name, value in tensors.items():
        if value.dtype != wire:
            raise ProtocolError("bad_dtype", f"{codec} delta {name} has dtype {value.dtype}")
        if codec == "int8":
            scale = scales.get(name)
            number = isinstance(scale, int | float) and not isinstance(scale, bool)
            if not number or not math.isfinite(scale) or scale <= 0:
                raise ProtocolError("malformed", f"int8 delta {name} has no valid scale")
            with np.errstate(over="ignore"):  # an absurd scale gives inf; the cloud refuses it
                out[name] = (value.astype(np.float64) * scale).astype(np.float32)
        else:
            out[name] = value.astype(np.float32)
    if codec == "int8" and set(scales) != set(tensors):
        raise ProtocolError("malformed", "int8 scales do not match the tensors")
    return out


def _scales(codec: str, params: object) -> dict:
    """int8's ``{"scales": {tensor: scale}}``; ``{}`` for the other codecs, which take none."""
    if codec != "int8":
        if params != {}:
            raise ProtocolError("malformed", f"{codec} takes no codec parameters")
        return {}
    if not isinstance(params, dict) or set(params) != {"scales"}:
        raise ProtocolError("malformed", 'int8 codec parameters must be {"scales": {...}}')
    scales = params["scales"]
    if not isinstance(scales, dict):
        raise ProtocolError("malformed", "int8 scales must map tensor names to numbers")
    return scales


def error_bound(delta: dict[str, np.ndarray], codec: str) -> dict[str, np.ndarray]:
    """The documented per-element bound on ``|x - decode(encode(x))|`` (arrays like ``delta``)."""
    bounds = {}
    for name, value in delta.items():
        value = np.abs(np.asarray(value, dtype=np.float64))
        if codec == "fp32":
            bounds[name] = value * 2.0**-24
        elif codec == "fp16":
            bounds[name] = np.maximum(value * 2.0**-11, 2.0**-25)
        else:
            peak = value.max() if value.size else 0.0
            # s/2, widened by a hair for float64 arithmetic, + float32 rounding of q*s
            bounds[name] = np.full_like(value, peak / 254.0 * (1 + 2.0**-20)) + value * 2.0**-23
    return bounds
