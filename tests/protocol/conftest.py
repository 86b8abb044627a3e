"""The keys the protocol tests share: a cloud and two sites."""

from __future__ import annotations

import pytest

from ftlct.protocol.identity import load_or_create_identity


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    root = tmp_path_factory.mktemp("keys")
    return {
        "cloud": load_or_create_identity(root / "cloud", "cloud"),
        "a": load_or_create_identity(root / "a", "site-a"),
        "b": load_or_create_identity(root / "b", "site-b"),
    }
