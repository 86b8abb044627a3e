"""Where the shared data and weights live, and skips with a reason when they do not."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared"
DATA = SHARED / "data"
WEIGHTS = SHARED / "weights" / "mobilenet_v2-imagenet-b0353104.pth"
CQ500 = DATA / "cq500-series"
COVID_CT = DATA / "covid-ct"
KIDNEY_CT = DATA / "kidney-ct"


def require(path: Path) -> Path:
    """Skip the calling test (with the reason) when ``path`` is absent."""
    if not path.exists():
        pytest.skip(f"needs {path} (../shared is not beside this clone)")
    return path


def require_program(path_or_name: str) -> str:
    """Absolute path of a program, or skip naming the Debian package that has it."""
    found = path_or_name if Path(path_or_name).is_file() else shutil.which(path_or_name)
    if not found:
        pytest.skip(f"{path_or_name} not installed (.ci/run installs mosquitto, dcmtk, orthanc)")
    return found
