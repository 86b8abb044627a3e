"""Fixtures of the agent tests: the session's model dir as a path, the CQ500 series."""

from __future__ import annotations

import pytest

from tests.support.paths import CQ500, require


@pytest.fixture(scope="session")
def model_path(model_dir):
    return model_dir.path


@pytest.fixture(scope="session")
def cq500():
    return require(CQ500)
