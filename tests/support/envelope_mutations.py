"""Mutations of a valid ftl-ct envelope, for fuzzing whoever opens one (cloud, agent, protocol).

Each method takes the bytes of a valid envelope and returns a mutated copy;
``signer`` (when given) re-signs a changed header, so the mutation passes the
signature and meets the schema checks behind it. One seeded ``random.Random``
drives everything, so a seed always gives the same bytes.
"""

from __future__ import annotations

import copy
import json
import random
import re
import struct

from ftlct.protocol.envelope import canonical_json
from ftlct.protocol.identity import Identity

SIGNING_DOMAIN = b"ftlct-envelope/1\n"  # what an envelope signature covers (protocol/envelope.py)
ODD_VALUES = ("", "x" * 70, 0, -1, 1.5, True, None, [], {}, [1, "a"], {"k": 1}, "0", 2**64)
EXTREMES = (2**63, 2**53 + 1, -1, 0, 1e308, -1e308, 10**40, 5e-324)
LITERALS = (b"7" * 5000, b"1e999", b"-1e999", b"NaN", b"0" * 40 + b"1", b"-0")
_KEY = re.compile(rb'"([A-Za-z0-9_.]+)":')


def split(data: bytes) -> tuple[dict, bytes]:
    """``(header, body)`` of a well-formed envelope."""
    (length,) = struct.unpack_from(">I", data, 4)
    return json.loads(data[8 : 8 + length]), data[8 + length :]


def pack(header_bytes: bytes, body: bytes) -> bytes:
    return b"FTLE" + struct.pack(">I", len(header_bytes)) + header_bytes + body


def resign(identity: Identity, header: dict, body: bytes) -> bytes:
    """``header`` (whatever was changed in it) signed by ``identity``, as a canonical envelope."""
    header = {k: v for k, v in header.items() if k != "signature"}
    header["signature"] = identity.sign(SIGNING_DOMAIN + canonical_json(header))
    return pack(canonical_json(header), body)


def json_value_length(raw: bytes, start: int) -> int:
    """Bytes of the JSON value that starts at ``raw[start]`` (canonical JSON: no whitespace)."""
    text = raw.decode("utf-8")
    char_start = len(raw[:start].decode("utf-8"))
    _, end = json.JSONDecoder().raw_decode(text, char_start)
    return len(text[char_start:end].encode("utf-8"))


class EnvelopeMutator:
    def __init__(self, rng: random.Random):
        self.rng = rng

    def truncate(self, data: bytes) -> bytes:
        return data[: self.rng.randrange(0, len(data))]

    def flip_bits(self, data: bytes) -> bytes:
        mutated = bytearray(data)
        for _ in range(self.rng.randint(1, 16)):
            mutated[self.rng.randrange(len(mutated))] ^= 1 << self.rng.randrange(8)
        return bytes(mutated)

    def swap_value(self, data: bytes, signer: Identity | None = None) -> bytes:
        """One value anywhere in the header replaced by one of another type (or a key added)."""
        header, body = split(data)
        changed = copy.deepcopy(header)
        containers = list(_dicts(changed))
        target = self.rng.choice(containers)
        if target and self.rng.random() < 0.85:
            target[self.rng.choice(sorted(target))] = copy.deepcopy(self.rng.choice(ODD_VALUES))
        else:
            target[self.rng.choice(["extra", "zz", "site"])] = self.rng.choice(ODD_VALUES)
        if signer is not None:
            return resign(signer, changed, body)
        return pack(canonical_json(changed), body)

    def set_number(self, data: bytes, path: tuple[str, ...], signer: Identity) -> bytes:
        """The value at ``path`` in the header set to an extreme number, re-signed."""
        header, body = split(data)
        target = header
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = self.rng.choice(EXTREMES)
        return resign(signer, header, body)

    def nest(self, data: bytes, depth: int | None = None) -> bytes:
        """A random value of the header replaced by arrays nested ``depth`` deep (raw bytes)."""
        depth = depth or self.rng.choice([17, 64, 1000, 5000])
        return self._replace_value(data, b"[" * depth + b"1" + b"]" * depth)

    def literal(self, data: bytes, key: bytes | None = None) -> bytes:
        """A value replaced by a number canonical JSON cannot carry (5000 digits, 1e999, NaN)."""
        return self._replace_value(data, self.rng.choice(LITERALS), key)

    def lie_about_length(self, data: bytes) -> bytes:
        (length,) = struct.unpack_from(">I", data, 4)
        claim = self.rng.choice([len(data), 0, self.rng.randrange(0, length), 2**32 - 1])
        return data[:4] + struct.pack(">I", claim) + data[8:]

    def _replace_value(self, data: bytes, value: bytes, key: bytes | None = None) -> bytes:
        header, body = split(data)
        raw = canonical_json(header)
        keys = [m for m in _KEY.finditer(raw) if key is None or m.group(0) == key]
        match = self.rng.choice(keys)
        start = match.end()
        end = start + json_value_length(raw, start)
        return pack(raw[:start] + value + raw[end:], body)


def _dicts(value):
    if isinstance(value, dict):
        yield value
        for item in value.values():
            yield from _dicts(item)
    elif isinstance(value, list):
        for item in value:
            yield from _dicts(item)
