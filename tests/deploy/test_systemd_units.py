"""deploy/*.service: systemd accepts them as they are, and they keep their hardening.

``systemd-analyze verify`` checks that ExecStart= names an executable, so the
test lays out a throwaway root with systemd's own unit files and a stand-in
program at the unit's ExecStart path; the unit file itself is used unchanged.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.paths import REPO

SYSTEMD_ANALYZE = "/usr/bin/systemd-analyze"
SYSTEM_UNITS = Path("/usr/lib/systemd/system")
UNITS = ["ftl-agent.service", "ftl-cloud.service"]
MAX_EXPOSURE_TENTHS = 20  # systemd-analyze security: 0 (locked down) .. 100 (unprotected)


def unit_options(name: str) -> dict[str, list[str]]:
    """``{"Section.Key": [values]}`` (a key may repeat, as SystemCallFilter= does)."""
    options: dict[str, list[str]] = {}
    section = ""
    for line in (REPO / "deploy" / name).read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        options.setdefault(f"{section}.{key}", []).append(value)
    return options


@pytest.fixture
def unit_root(tmp_path):
    if not Path(SYSTEMD_ANALYZE).is_file():
        pytest.skip("systemd-analyze not installed (Debian package systemd: make system-deps)")
    if not SYSTEM_UNITS.is_dir():
        pytest.skip(f"{SYSTEM_UNITS} absent: systemd's unit files are needed to verify against")
    root = tmp_path / "root"
    (root / "usr/lib/systemd").mkdir(parents=True)
    shutil.copytree(SYSTEM_UNITS, root / "usr/lib/systemd/system", symlinks=True)
    (root / "etc/systemd/system").mkdir(parents=True)
    return root


def _install(root: Path, name: str) -> str:
    program = unit_options(name)["Service.ExecStart"][0].split()[0]
    stand_in = root / program.lstrip("/")
    stand_in.parent.mkdir(parents=True, exist_ok=True)
    stand_in.write_text("#!/bin/sh\nexit 0\n")
    stand_in.chmod(0o755)
    shutil.copy(REPO / "deploy" / name, root / "etc/systemd/system" / name)
    return f"/etc/systemd/system/{name}"


@pytest.mark.parametrize("name", UNITS)
def test_unit_passes_systemd_analyze_verify(unit_root, name):
    unit = _install(unit_root, name)
    result = subprocess.run(
        [SYSTEMD_ANALYZE, "verify", f"--root={unit_root}", unit],
        capture_output=True,
        text=True,
        timeout=60,
    )
    # verify exits 0 on some problems (an unknown key is "ignoring"): any word is a finding
    assert result.returncode == 0 and name not in result.stderr + result.stdout, result.stderr


@pytest.mark.parametrize("name", UNITS)
def test_unit_exposure_stays_low(unit_root, name):
    unit = _install(unit_root, name)
    result = subprocess.run(
        [
            SYSTEMD_ANALYZE,
            "security",
            "--offline=true",
            f"--threshold={MAX_EXPOSURE_TENTHS}",
            f"--root={unit_root}",
            unit,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout[-1500:] + result.stderr


@pytest.mark.parametrize("name", UNITS)
def test_unit_runs_unprivileged_hardened_and_restarts_on_failure(name):
    options = unit_options(name)

    def one(key):
        (value,) = options[key]
        return value

    assert one("Service.User") not in ("", "root") and one("Service.Group") != "root"
    assert one("Service.Restart") == "on-failure"
    assert one("Service.NoNewPrivileges") == "yes"
    assert one("Service.ProtectSystem") == "strict"
    assert one("Service.PrivateTmp") == "yes"
    assert one("Service.ProtectHome") == "yes"
    assert one("Service.CapabilityBoundingSet") == ""  # no capability at all
    assert one("Service.AmbientCapabilities") == ""
    state = one("Service.StateDirectory")
    assert "${STATE_DIRECTORY}" in one("Service.ExecStart") and state.startswith("ftl-")
    assert "--config /etc/ftl-ct/" in one("Service.ExecStart")
    # the stop timeout covers the agent's drain of open associations
    assert int(one("Service.TimeoutStopSec")) > 30
