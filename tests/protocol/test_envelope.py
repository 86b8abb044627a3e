"""Envelope form: canonical header, body hash, size bounds, signature."""

import json
import struct

import pytest

from ftlct.protocol.envelope import MAX_BYTES, canonical_json, open_envelope, seal
from ftlct.protocol.errors import ProtocolError
from ftlct.protocol.identity import load_or_create_identity


@pytest.fixture(scope="module")
def alice(tmp_path_factory):
    return load_or_create_identity(tmp_path_factory.mktemp("keys"), "alice")


def _split(data):
    (n,) = struct.unpack_from(">I", data, 4)
    return json.loads(data[8 : 8 + n]), data[8 + n :]


def _join(header, body):
    raw = canonical_json(header)
    return b"FTLE" + struct.pack(">I", len(raw)) + raw + body


def _reason(data, **kwargs):
    with pytest.raises(ProtocolError) as info:
        open_envelope(data, **kwargs)
    return info.value.reason


def test_sealed_envelope_opens_and_verifies(alice):
    data = seal("twin_state", "fed", {"status": "idle"}, alice, body=b"", created=1.5)
    envelope = open_envelope(data, "twin_state")
    assert (envelope.kind, envelope.federation, envelope.signer) == ("twin_state", "fed", "alice")
    assert envelope.payload == {"status": "idle"} and envelope.created == 1.5
    envelope.verify(alice.public_b64)
    header, _ = _split(data)
    assert header["schema"] == "ftlct-envelope/1" and header["body"] is None


def test_header_is_readable_json_after_the_prefix(alice):
    data = seal("round", "fed", {"round": 3}, alice, body=b"xyz")
    header, body = _split(data)
    assert header["payload"] == {"round": 3} and body == b"xyz"
    assert header["body"]["bytes"] == 3 and len(header["body"]["sha256"]) == 64


def test_another_key_or_any_changed_byte_fails_verification(tmp_path, alice):
    mallory = load_or_create_identity(tmp_path, "alice")  # same name, different key
    forged = seal("round", "fed", {"round": 1}, mallory)
    with pytest.raises(ProtocolError) as info:
        open_envelope(forged).verify(alice.public_b64)
    assert info.value.reason == "bad_signature"
    header, body = _split(seal("round", "fed", {"round": 1}, alice))
    header["payload"]["round"] = 2
    with pytest.raises(ProtocolError, match="bad signature"):
        open_envelope(_join(header, body)).verify(alice.public_b64)


def test_a_changed_body_no_longer_matches_its_header(alice):
    data = seal("site_update", "fed", {}, alice, body=b"0123456789")
    assert _reason(data[:-1] + b"X") == "malformed"
    assert _reason(data + b"extra") == "malformed"


@pytest.mark.parametrize(
    "mangle",
    [
        lambda d: b"XXXX" + d[4:],
        lambda d: d[:6],
        lambda d: d[:4] + struct.pack(">I", 10**7) + d[8:],
        lambda d: d[:8] + b" " + d[8:],  # valid JSON, not canonical
    ],
)
def test_broken_framing_is_malformed(alice, mangle):
    assert _reason(mangle(seal("round", "fed", {"round": 1}, alice))) == "malformed"


def test_non_canonical_header_is_refused(alice):
    header, body = _split(seal("round", "fed", {"round": 1}, alice))
    raw = json.dumps(header, indent=1).encode()
    data = b"FTLE" + struct.pack(">I", len(raw)) + raw + body
    assert _reason(data) == "malformed"


def test_unknown_header_keys_are_refused(alice):
    header, body = _split(seal("round", "fed", {"round": 1}, alice))
    header["patient"] = "x"
    assert _reason(_join(header, body)) == "malformed"


def test_size_bounds_apply_before_parsing_and_when_sealing(alice):
    data = seal("site_update", "fed", {}, alice, body=b"x" * 1000)
    assert _reason(data, max_bytes=999) == "oversize"
    assert _reason(b"\0" * (MAX_BYTES["twin_state"] + 1), kind="twin_state") == "oversize"
    with pytest.raises(ProtocolError) as info:
        seal("twin_state", "fed", {}, alice, body=b"x" * MAX_BYTES["twin_state"])
    assert info.value.reason == "oversize"


def test_kind_mismatch_is_reported(alice):
    assert _reason(seal("round", "fed", {}, alice), kind="global_model") == "wrong_kind"


def test_nan_cannot_be_sealed(alice):
    with pytest.raises(ProtocolError, match="canonical JSON"):
        seal("round", "fed", {"x": float("nan")}, alice)


@pytest.mark.parametrize("kind", [["site_update"], {"k": 1}, 7, None])
def test_a_kind_that_is_not_a_string_is_malformed_not_a_type_error(alice, kind):
    header, body = _split(seal("twin_state", "fed", {"status": "idle"}, alice))
    header["kind"] = kind  # found by the fuzz suite: a dict kind raised TypeError (unhashable)
    assert _reason(_join(header, body)) == "malformed"
