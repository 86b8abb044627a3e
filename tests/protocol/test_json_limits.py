"""A hostile header is refused before ``json.loads`` sees it: no RecursionError, no ValueError."""

from __future__ import annotations

import struct

import pytest

from ftlct.protocol.envelope import open_envelope, seal
from ftlct.protocol.errors import ProtocolError
from ftlct.protocol.identity import load_or_create_identity
from ftlct.protocol.json_limits import JsonLimits, check_json_limits


def _raw_envelope(header: bytes, body: bytes = b"") -> bytes:
    return b"FTLE" + struct.pack(">I", len(header)) + header + body


def _reason(data: bytes) -> str:
    with pytest.raises(ProtocolError) as info:
        open_envelope(data)
    return info.value.reason


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        (b"[" * 5000, "header_limits"),  # RecursionError in json.loads on main
        (b"[" * 5000 + b"]" * 5000, "header_limits"),
        (b'{"a":' * 3000 + b"1" + b"}" * 3000, "header_limits"),
        (b'{"payload":' + b"9" * 5000 + b"}", "header_limits"),  # int max str digits: ValueError
        (b'{"payload":-' + b"1" * 400 + b".5e3}", "header_limits"),
        (b'{"payload":"' + b"x" * 5000 + b'"}', "header_limits"),
        (b"[" + b"0," * 70_000 + b"0]", "header_limits"),
        (b'{"a":"unterminated' + b"[" * 3000, "malformed"),
        (b'{"a":"\\"' + b"[" * 3000, "malformed"),  # the escaped quote does not end the string
        (b"\xff\xfe not utf-8", "malformed"),
        (b"NaN", "malformed"),
        (b'{"created":1e999}', "malformed"),  # parses to inf: not canonical JSON
    ],
)
def test_hostile_headers_are_refused_with_a_reason_not_an_exception(header, reason):
    assert _reason(_raw_envelope(header)) == reason


def test_brackets_and_digits_inside_strings_do_not_count():
    text = b'{"a":"' + b"[" * 100 + b"9" * 30 + b'","b":"\\"]]]"}'
    check_json_limits(text)  # no error: all of it is string content


def test_limits_are_inclusive_bounds():
    limits = JsonLimits(max_depth=3, max_number_chars=5, max_string_bytes=4, max_elements=4)
    check_json_limits(b'[[["abcd",12345]]]', limits)
    for text in (b"[[[[]]]]", b"[123456]", b'["abcde"]', b"[1,2,3,4,5]"):
        with pytest.raises(ProtocolError, match="before parsing"):
            check_json_limits(text, limits)


def test_a_real_envelope_passes_the_limits(tmp_path):
    identity = load_or_create_identity(tmp_path, "site-a")
    payload = {"status": "idle", "nested": {"deep": {"er": [1.5e-300, -12345678901234567]}}}
    data = seal("twin_state", "fed", payload, identity)
    assert open_envelope(data).payload == payload
