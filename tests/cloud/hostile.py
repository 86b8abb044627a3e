"""Messages of issue 10's point 1: each one stopped ``ftl-cloud serve`` for good on main."""

from __future__ import annotations

import struct

from ftlct.protocol import exchange
from ftlct.protocol.envelope import seal
from ftlct.protocol.identity import Identity


def raw_envelope(header: bytes, body: bytes = b"") -> bytes:
    """The envelope prefix around any header bytes: nothing checks them before the parser."""
    return b"FTLE" + struct.pack(">I", len(header)) + header + body


def nested_header(depth: int = 5000) -> bytes:
    return raw_envelope(b"[" * depth + b"]" * depth)  # RecursionError in json.loads


def long_integer_header(digits: int = 5000) -> bytes:
    return raw_envelope(b'{"created":' + b"7" * digits + b"}")  # ValueError: int max str digits


def resealed_update(identity: Identity, federation: str, update: bytes, **changes) -> bytes:
    """``update`` re-signed by ``identity`` with payload fields changed past build_update's checks."""
    envelope = exchange.peek(update)
    return seal("site_update", federation, {**envelope.payload, **changes}, identity, envelope.body)


def signed_but_impossible(identity: Identity, federation: str, update: bytes) -> dict[str, bytes]:
    """Validly signed updates from an enrolled site that overflowed SQLite or crashed the codec."""
    return {
        "n_samples 2**63": resealed_update(identity, federation, update, n_samples=2**63),
        "codec_params list": resealed_update(
            identity, federation, update, codec="int8", codec_params={"scales": ["dense.0.weight"]}
        ),
    }
