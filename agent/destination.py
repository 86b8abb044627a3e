"""``AE@HOST:PORT``: where the agent sends its results by C-STORE."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Destination:
    ae_title: str
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


def parse_destination(text: str) -> Destination:
    """Parse ``AE@HOST:PORT``; raises ``ValueError`` with the reason."""
    ae_title, at, address = text.partition("@")
    host, colon, port_text = address.rpartition(":")
    host = host.strip("[]")  # allow [::1]:104
    if not at or not colon or not ae_title or not host:
        raise ValueError(f"expected AE@HOST:PORT, got {text!r}")
    if len(ae_title) > 16 or "\\" in ae_title or not ae_title.isascii():
        raise ValueError(f"AE title {ae_title!r} must be 1-16 ASCII characters, no backslash")
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"port {port_text!r} is not a number") from None
    if not 0 < port < 65536:
        raise ValueError(f"port {port} out of range 1..65535")
    return Destination(ae_title, host, port)
