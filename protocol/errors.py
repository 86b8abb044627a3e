"""The one exception the wire layer raises, with a short machine-readable reason.

And ``is_exit``: what a ``catch everything but an exit`` handler lets through.
"""

from __future__ import annotations

# What no handler of hostile input swallows: the interpreter's own ways out.
EXITS = (SystemExit, KeyboardInterrupt, GeneratorExit)


def is_exit(exc: BaseException) -> bool:
    """True for an interpreter exit; False for one input's failure, whatever its class.

    Not every failure is an ``Exception``: an extension written in Rust through
    pyo3 (pylibjpeg-rle's RLE decoder, safetensors, cryptography) raises
    ``PanicException``, a ``BaseException``, when its code panics, as the RLE
    decoder does on some corrupt streams. A handler that caught only
    ``Exception`` let one hostile dataset kill the agent's inference thread;
    handlers of network input catch ``BaseException`` and re-raise only these.
    """
    return isinstance(exc, EXITS)


class ProtocolError(ValueError):
    """A message that cannot be accepted. ``reason`` is a stable code (counted by the cloud)."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason
