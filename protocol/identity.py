"""Ed25519 identities for sites and the cloud, and signatures over bytes.

A key pair lives in a directory as ``{name}.ed25519`` (PKCS#8 PEM, mode 0600)
and ``{name}.ed25519.pub`` (the raw 32-byte public key in base64, the form
printed by ``ftl-agent identity`` / ``ftl-cloud identity`` and given to
``ftl-cloud enroll`` and ``--cloud-key``).
"""

from __future__ import annotations

import base64
import binascii
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ftlct.export.files import atomic_write_bytes
from ftlct.protocol.topics import check_name

PRIVATE_SUFFIX = ".ed25519"
PUBLIC_SUFFIX = ".ed25519.pub"


class IdentityError(ValueError):
    """A key file or public key string that cannot be used."""


@dataclass(frozen=True)
class Identity:
    name: str
    private: Ed25519PrivateKey
    public_b64: str

    def sign(self, data: bytes) -> str:
        """Base64 Ed25519 signature of ``data``."""
        return base64.b64encode(self.private.sign(data)).decode("ascii")


def public_b64_of(private: Ed25519PrivateKey) -> str:
    raw = private.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    return base64.b64encode(raw).decode("ascii")


def public_key_from_b64(text: str) -> Ed25519PublicKey:
    """Parse a base64 raw Ed25519 public key; ``IdentityError`` if it is not one."""
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError, AttributeError) as exc:
        raise IdentityError(f"public key is not base64: {text!r}") from exc
    if len(raw) != 32:
        raise IdentityError(f"an Ed25519 public key has 32 bytes, this one {len(raw)}")
    return Ed25519PublicKey.from_public_bytes(raw)


def verify_signature(public_b64: str, data: bytes, signature_b64: str) -> bool:
    """True when ``signature_b64`` is ``public_b64``'s signature of ``data``."""
    try:
        key = public_key_from_b64(public_b64)
        signature = base64.b64decode(signature_b64, validate=True)
        key.verify(signature, data)
    except (IdentityError, InvalidSignature, binascii.Error, ValueError, TypeError):
        return False
    return True


def key_paths(directory: str | os.PathLike, name: str) -> tuple[Path, Path]:
    directory = Path(directory)
    return directory / f"{name}{PRIVATE_SUFFIX}", directory / f"{name}{PUBLIC_SUFFIX}"


def load_identity(directory: str | os.PathLike, name: str) -> Identity:
    """The key pair ``name`` in ``directory``; ``IdentityError`` if absent or unreadable."""
    check_name("identity", name)
    private_path, public_path = key_paths(directory, name)
    if not private_path.is_file():
        raise IdentityError(f"no private key {private_path}")
    try:
        private = serialization.load_pem_private_key(private_path.read_bytes(), password=None)
    except (ValueError, TypeError, OSError) as exc:
        raise IdentityError(f"{private_path}: unreadable private key: {exc}") from exc
    if not isinstance(private, Ed25519PrivateKey):
        raise IdentityError(f"{private_path}: not an Ed25519 key")
    public_b64 = public_b64_of(private)
    if not public_path.is_file() or public_path.read_text().strip() != public_b64:
        atomic_write_bytes(public_path, (public_b64 + "\n").encode(), mode=0o644)
    return Identity(name, private, public_b64)


def load_or_create_identity(directory: str | os.PathLike, name: str) -> Identity:
    """Load ``name``'s key pair from ``directory``, creating it (private file 0600) if absent."""
    check_name("identity", name)
    directory = Path(directory)
    private_path, public_path = key_paths(directory, name)
    if not private_path.exists():
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        private = Ed25519PrivateKey.generate()
        pem = private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        atomic_write_bytes(private_path, pem, mode=0o600)
        atomic_write_bytes(public_path, (public_b64_of(private) + "\n").encode(), mode=0o644)
    return load_identity(directory, name)
