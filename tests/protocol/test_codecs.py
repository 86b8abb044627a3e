"""Delta codecs keep their documented error bounds."""

import numpy as np
import pytest

from ftlct.protocol.codecs import CODECS, decode_delta, encode_delta, error_bound
from ftlct.protocol.errors import ProtocolError


def _delta(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "dense.0.weight": (rng.normal(size=(2, 1280)) * 0.05).astype(np.float32),
        "dense.0.bias": np.array([3.0, -1e-6], np.float32),
        "zeros": np.zeros(4, np.float32),
        "spiky": np.array([1e-8, -1e-3, 250.0, -0.5], np.float32),
    }


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_round_trip_error_stays_within_the_documented_bound(codec, seed):
    delta = _delta(seed)
    tensors, params = encode_delta(delta, codec)
    decoded = decode_delta(tensors, codec, params)
    bounds = error_bound(delta, codec)
    for name, value in delta.items():
        assert decoded[name].dtype == np.float32 and decoded[name].shape == value.shape
        error = np.abs(decoded[name].astype(np.float64) - value.astype(np.float64))
        assert (error <= bounds[name]).all(), (codec, name, float(error.max()))


def test_int8_bound_is_tight_enough_to_matter():
    """The bound is max|x|/254: a coarser quantiser (e.g. /127 steps of 2*scale) would break it."""
    x = {"w": np.linspace(-1, 1, 10001).astype(np.float32)}
    tensors, params = encode_delta(x, "int8")
    error = np.abs(decode_delta(tensors, "int8", params)["w"] - x["w"]).max()
    assert 0.9 / 254 < error <= 1.0 / 254 * (1 + 1e-5)
    assert tensors["w"].dtype == np.int8 and tensors["w"].nbytes == x["w"].nbytes // 4


def test_fp16_refuses_values_it_cannot_represent():
    with pytest.raises(ValueError, match="fp16 range"):
        encode_delta({"w": np.array([1e5], np.float32)}, "fp16")


def test_non_finite_deltas_are_not_encoded():
    with pytest.raises(ValueError, match="non-finite"):
        encode_delta({"w": np.array([np.nan], np.float32)}, "fp32")


def test_a_tensor_in_the_wrong_wire_dtype_is_a_dtype_error():
    with pytest.raises(ProtocolError) as info:
        decode_delta({"w": np.zeros(2, np.float16)}, "fp32", {})
    assert info.value.reason == "bad_dtype"


@pytest.mark.parametrize(
    ("tensors", "codec", "params"),
    [
        ({"w": np.zeros(2, np.int8)}, "int8", {}),
        ({"w": np.zeros(2, np.int8)}, "int8", {"scales": {"w": -1.0}}),
        ({"w": np.zeros(2, np.int8)}, "int8", {"scales": {"w": 1.0, "v": 1.0}}),
        ({"w": np.zeros(2, np.float32)}, "bf16", {}),
    ],
)
def test_bodies_that_do_not_fit_their_codec_are_malformed(tensors, codec, params):
    with pytest.raises(ProtocolError) as info:
        decode_delta(tensors, codec, params)
    assert info.value.reason == "malformed"
