from __future__ import annotations

import pytest

from tests.cloud.harness import make_tiny_model
from tests.support.mosquitto import mosquitto_broker  # noqa: F401  (fixture)


@pytest.fixture
def tiny_model(tmp_path):
    return make_tiny_model(tmp_path / "model")
