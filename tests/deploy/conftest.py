"""Fixtures of the deployment tests: the session's model directory as a path."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def model_path(model_dir):
    return model_dir.path
