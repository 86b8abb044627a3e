"""The one exception the wire layer raises, with a short machine-readable reason."""

from __future__ import annotations


class ProtocolError(ValueError):
    """A message that cannot be accepted. ``reason`` is a stable code (counted by the cloud)."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason
