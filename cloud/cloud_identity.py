"""Where the cloud keeps its Ed25519 key pair: ``{state_dir}/keys/cloud.ed25519``."""

from __future__ import annotations

from ftlct.cloud.settings import CloudSettings
from ftlct.protocol.identity import Identity, load_or_create_identity

KEYS_DIR = "keys"
CLOUD_IDENTITY = "cloud"


def cloud_identity(settings: CloudSettings) -> Identity:
    """The cloud's identity, created (private key 0600) on first use."""
    return load_or_create_identity(settings.state_path / KEYS_DIR, CLOUD_IDENTITY)
