"""A stand-in for pyo3's ``PanicException``: a ``BaseException`` that is not an ``Exception``.

Rust extensions (pylibjpeg-rle, safetensors, cryptography) raise the real one
when their code panics; ``tests/agent/test_codec_panic.py`` makes the RLE
decoder raise it on a real hostile stream. Where no input is known to make a
library panic, tests raise this one in its place.
"""

from __future__ import annotations


class PanicException(BaseException):
    pass
