"""The signed, size-bounded, self-describing container every MQTT payload travels in.

Layout (all integers big-endian)::

    b"FTLE" | u32 header length | header: canonical JSON, UTF-8 | body: safetensors bytes (may be empty)

The header is canonical JSON (sorted keys, no whitespace, no NaN) and must be
received in exactly that form, so there is one byte string to sign::

    {"body": {"bytes": N, "codec": "safetensors", "sha256": "..."} | null,
     "created": 1712345678.123, "federation": "F", "kind": "site_update",
     "payload": {...kind-specific JSON...}, "schema": "ftlct-envelope/1",
     "signature": "base64 Ed25519", "signer": "site-a"}

The signature covers ``b"ftlct-envelope/1\\n"`` + the canonical header without
``signature``; the header holds the body's sha256, so the body is covered too.
Size limits, and the header's nesting depth, number and string lengths and
element count (``json_limits``), are checked before anything is parsed.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
import time
from dataclasses import dataclass

from ftlct.protocol.errors import ProtocolError
from ftlct.protocol.identity import Identity, verify_signature
from ftlct.protocol.json_limits import check_json_limits
from ftlct.protocol.topics import NAME

SCHEMA = "ftlct-envelope/1"
MAGIC = b"FTLE"
BODY_CODEC = "safetensors"
MAX_HEADER_BYTES = 256 * 1024
# Default upper bounds per kind (bytes, whole envelope). A head for 1280-d
# embeddings is ~10 KB (linear) to ~1.3 MB (MLP, fp32); the bounds leave room.
MAX_BYTES = {
    "round": 256 * 1024,
    "twin_state": 64 * 1024,
    "global_model": 64 * 1024 * 1024,
    "site_update": 16 * 1024 * 1024,
    "receipt": 4 * 1024,
}
KINDS = tuple(MAX_BYTES)
_PREFIX = struct.Struct(">4sI")
_SIGNING_DOMAIN = SCHEMA.encode() + b"\n"


def canonical_json(obj) -> bytes:
    """The one byte form of a JSON value (sorted keys, compact, UTF-8, finite numbers)."""
    try:
        return json.dumps(
            obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        ).encode("utf-8")
    except ValueError as exc:
        raise ProtocolError("malformed", f"payload is not canonical JSON: {exc}") from exc


@dataclass(frozen=True)
class Envelope:
    kind: str
    federation: str
    signer: str
    created: float
    payload: dict
    body: bytes
    signature: str
    signed_bytes: bytes  # what the signature covers

    def verify(self, public_b64: str) -> None:
        """``ProtocolError('bad_signature')`` unless ``public_b64`` signed this envelope."""
        if not verify_signature(public_b64, self.signed_bytes, self.signature):
            raise ProtocolError("bad_signature", f"{self.kind} from {self.signer}: bad signature")


def seal(
    kind: str,
    federation: str,
    payload: dict,
    identity: Identity,
    body: bytes = b"",
    created: float | None = None,
) -> bytes:
    """Sign and pack one message; ``ProtocolError('oversize')`` if it exceeds its kind's bound."""
    if kind not in MAX_BYTES:
        raise ValueError(f"unknown envelope kind {kind!r}")
    header = {
        "schema": SCHEMA,
        "kind": kind,
        "federation": federation,
        "signer": identity.name,
        "created": round(time.time() if created is None else created, 3),
        "payload": payload,
        "body": (
            {"codec": BODY_CODEC, "bytes": len(body), "sha256": hashlib.sha256(body).hexdigest()}
            if body
            else None
        ),
    }
    header["signature"] = identity.sign(_SIGNING_DOMAIN + canonical_json(header))
    header_bytes = canonical_json(header)
    data = _PREFIX.pack(MAGIC, len(header_bytes)) + header_bytes + body
    if len(data) > MAX_BYTES[kind] or len(header_bytes) > MAX_HEADER_BYTES:
        raise ProtocolError("oversize", f"{kind} of {len(data)} bytes exceeds {MAX_BYTES[kind]}")
    return data


def open_envelope(data: bytes, kind: str | None = None, max_bytes: int | None = None) -> Envelope:
    """Unpack and check an envelope's form (not its signature: see ``Envelope.verify``).

    Reasons: ``oversize`` (over ``max_bytes`` or the kind's bound), ``header_limits``
    (too deep, too long or too many elements to parse), ``malformed``,
    ``wrong_kind`` (not ``kind``).
    """
    limit = max_bytes if max_bytes is not None else MAX_BYTES.get(kind, max(MAX_BYTES.values()))
    if len(data) > limit:
        raise ProtocolError("oversize", f"message of {len(data)} bytes exceeds {limit}")
    if len(data) < _PREFIX.size:
        raise ProtocolError("malformed", "message shorter than an envelope prefix")
    magic, header_len = _PREFIX.unpack_from(data)
    if magic != MAGIC:
        raise ProtocolError("malformed", "not an ftl-ct envelope (bad magic)")
    if header_len > MAX_HEADER_BYTES or _PREFIX.size + header_len > len(data):
        raise ProtocolError("malformed", f"header length {header_len} does not fit the message")
    header_bytes = bytes(data[_PREFIX.size : _PREFIX.size + header_len])
    body = bytes(data[_PREFIX.size + header_len :])
    check_json_limits(header_bytes)  # json.loads recurses per level and converts digits slowly
    try:
        header = json.loads(header_bytes.decode("utf-8"))
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError, JSONDecodeError included
        raise ProtocolError("malformed", f"header is not JSON: {exc}") from exc
    if not isinstance(header, dict) or canonical_json(header) != header_bytes:
        raise ProtocolError("malformed", "header is not a canonical JSON object")
    _check_header(header, body)
    if kind is not None and header["kind"] != kind:
        raise ProtocolError("wrong_kind", f"expected a {kind} message, got {header['kind']}")
    if max_bytes is None and len(data) > MAX_BYTES[header["kind"]]:
        raise ProtocolError("oversize", f"{header['kind']} of {len(data)} bytes is too large")
    signature = header.pop("signature")
    return Envelope(
        kind=header["kind"],
        federation=header["federation"],
        signer=header["signer"],
        created=float(header["created"]),
        payload=header["payload"],
        body=body,
        signature=signature,
        signed_bytes=_SIGNING_DOMAIN + canonical_json(header),
    )


def _check_header(header: dict, body: bytes) -> None:
    expected = {"schema", "kind", "federation", "signer", "created", "payload", "body", "signature"}
    if set(header) != expected:
        raise ProtocolError("malformed", f"header keys {sorted(header)} != {sorted(expected)}")
    if header["schema"] != SCHEMA:
        raise ProtocolError("malformed", f"unsupported schema {header['schema']!r}")
    if not isinstance(header["kind"], str) or header["kind"] not in MAX_BYTES:
        raise ProtocolError("malformed", f"unknown kind {header['kind']!r}")
    for key in ("federation", "signer"):
        if not isinstance(header[key], str) or not NAME.match(header[key]):
            raise ProtocolError("malformed", f"bad {key} {header[key]!r}")
    created = header["created"]
    if not isinstance(created, int | float) or not math.isfinite(created):
        raise ProtocolError("malformed", "bad created time")
    if not isinstance(header["payload"], dict) or not isinstance(header["signature"], str):
        raise ProtocolError("malformed", "payload must be an object and signature a string")
    described = header["body"]
    if described is None:
        if body:
            raise ProtocolError("malformed", "body present but not described in the header")
        return
    if (
        not isinstance(described, dict)
        or described.get("codec") != BODY_CODEC
        or described.get("bytes") != len(body)
        or described.get("sha256") != hashlib.sha256(body).hexdigest()
    ):
        raise ProtocolError("malformed", "body does not match its description (codec/size/sha256)")
