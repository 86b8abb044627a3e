import stat

import pytest

from ftlct.protocol.identity import (
    IdentityError,
    load_identity,
    load_or_create_identity,
    public_key_from_b64,
    verify_signature,
)


def test_identity_is_created_once_with_a_private_key_only_the_owner_reads(tmp_path):
    first = load_or_create_identity(tmp_path / "keys", "site-a")
    again = load_or_create_identity(tmp_path / "keys", "site-a")
    assert first.public_b64 == again.public_b64
    private = tmp_path / "keys" / "site-a.ed25519"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert (tmp_path / "keys" / "site-a.ed25519.pub").read_text().strip() == first.public_b64
    assert len(public_key_from_b64(first.public_b64).public_bytes_raw()) == 32


def test_signatures_verify_only_with_the_signers_key(tmp_path):
    a = load_or_create_identity(tmp_path, "a")
    b = load_or_create_identity(tmp_path, "b")
    signature = a.sign(b"hello")
    assert verify_signature(a.public_b64, b"hello", signature)
    assert not verify_signature(a.public_b64, b"hellO", signature)
    assert not verify_signature(b.public_b64, b"hello", signature)
    assert not verify_signature("not base64!", b"hello", signature)
    assert not verify_signature(a.public_b64, b"hello", "AAAA")


def test_missing_or_corrupt_keys_are_reported(tmp_path):
    with pytest.raises(IdentityError, match="no private key"):
        load_identity(tmp_path, "absent")
    (tmp_path / "bad.ed25519").write_text("garbage")
    with pytest.raises(IdentityError, match="unreadable private key"):
        load_identity(tmp_path, "bad")


@pytest.mark.parametrize("text", ["", "abc", "QUJD", "!!!!"])
def test_malformed_public_keys_are_refused(text):
    with pytest.raises(IdentityError):
        public_key_from_b64(text)
