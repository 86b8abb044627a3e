"""Lossless JPEG (Process 14 and its selection value 1) decoded by libjpeg-turbo, as a pydicom
decoding plugin tried before pylibjpeg.

CT series from scanners often arrive as JPEG Lossless SV1 (the CQ500 series does).
pylibjpeg-libjpeg decodes a 512x512 slice in ~13 ms here and holds the GIL while
it does, so the agent's decode threads run one at a time and decoding, not the
backbone, bounds a series' embedding (~25 ms a slice, ~6.5 s for 238 slices:
longer than the quiet period). libjpeg-turbo (``imagecodecs.jpeg8_decode``)
decodes the same frames to the same values in ~3.3 ms and releases the GIL
(~1.4 ms a frame on two threads).

A frame libjpeg-turbo cannot decode, or decodes to another shape or sample size
than the dataset declares, raises here, and pydicom then tries the next plugin
(pylibjpeg), so nothing that decoded before stops decoding. Without imagecodecs
the plugin reports itself unavailable and pylibjpeg decodes as before.
"""

from __future__ import annotations

import functools
import threading

import numpy as np
from pydicom.pixels.decoders import JPEGLosslessDecoder, JPEGLosslessSV1Decoder
from pydicom.uid import JPEGLossless, JPEGLosslessSV1

PLUGIN = "libjpeg-turbo"
DECODER_DEPENDENCIES = {
    JPEGLossless: ("imagecodecs>=2024.1",),
    JPEGLosslessSV1: ("imagecodecs>=2024.1",),
}
_DECODERS = (JPEGLosslessDecoder, JPEGLosslessSV1Decoder)
_install_lock = threading.Lock()


@functools.cache
def _jpeg8_decode():
    """imagecodecs' decoder, looked up once (it is called for every frame), or None."""
    try:
        from imagecodecs import jpeg8_decode
    except ImportError:
        return None
    return jpeg8_decode


def is_available(uid: str) -> bool:
    return uid in DECODER_DEPENDENCIES and _jpeg8_decode() is not None


def decode_frame(src: bytes, runner) -> bytes:
    """One encoded frame -> its pixel bytes, as pydicom's runner expects them.

    The frame is decoded into an array of the size the dataset declares: a frame header
    announcing other dimensions (a forged 60000 x 60000, say) is refused before anything of
    its size is allocated.
    """
    samples = runner.samples_per_pixel
    expected = (runner.rows, runner.columns) + ((samples,) if samples > 1 else ())
    dtype = {8: np.uint8, 16: np.uint16}.get(runner.bits_allocated)
    if dtype is None:
        raise ValueError(
            f"libjpeg-turbo decodes 8 or 16 bits, the dataset allocates {runner.bits_allocated}"
        )
    out = np.empty(expected, dtype)
    try:
        _jpeg8_decode()(src, out=out)
    except ValueError as exc:  # imagecodecs: the frame's shape or sample size is another
        raise ValueError(
            f"the frame is not what the dataset declares ({expected}, {runner.bits_allocated} "
            f"bits allocated): {exc}"
        ) from exc
    if samples > 1:
        runner.set_option("planar_configuration", 0)  # libjpeg-turbo interleaves colour
    return out.astype(out.dtype.newbyteorder("<"), copy=False).tobytes()


def install() -> bool:
    """Make this plugin the first one pydicom tries for both lossless JPEG syntaxes; True if it
    is. Idempotent; the plugins already there stay, behind it, in their order.

    pydicom tries a decoder's available plugins in the order of its ``_available`` dict
    (``add_plugin`` only appends), so the order is set there.
    """
    with _install_lock:
        for decoder in _DECODERS:
            if PLUGIN not in decoder._available and is_available(decoder.UID):
                decoder.add_plugin(PLUGIN, (__name__, "decode_frame"))
            if PLUGIN in decoder._available:
                ordered = {PLUGIN: decoder._available.pop(PLUGIN), **decoder._available}
                decoder._available.clear()
                decoder._available.update(ordered)
        return all(next(iter(decoder._available), None) == PLUGIN for decoder in _DECODERS)
