"""Installable without the repository: ``pip wheel .`` -> a clean venv -> ``ftl-export build``
-> ``ftl-agent serve`` receives a study and classifies it, all from outside the source tree."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.agent.synthetic_ct import write_series
from tests.support.dicom_peers import storescu, wait_for
from tests.support.paths import REPO
from tests.support.ports import LOOPBACK, free_port, wait_for_port

pytestmark = pytest.mark.slow

TORCH = "torch==2.13.0"  # the CPU build, as the Makefile installs it


def run(*args, cwd: Path, timeout: float = 900, env: dict | None = None):
    result = subprocess.run(
        [str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env
    )
    assert result.returncode == 0, f"{args[:3]}...: {result.stdout[-2000:]}{result.stderr[-3000:]}"
    return result


# what a build must not see: local state, caches, the built model, earlier builds
NOT_SOURCE = shutil.ignore_patterns(
    ".git", ".venv", "models", "out", "build", "dist", "*.egg-info", "__pycache__", ".*_cache"
)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    # built from a copy of the source tree, so the build leaves nothing in the checkout
    source = tmp_path_factory.mktemp("source") / "ftl-ct"
    shutil.copytree(REPO, source, ignore=NOT_SOURCE)
    dist = tmp_path_factory.mktemp("dist")
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", dist, source, cwd=dist)
    (built,) = dist.glob("ftl_ct-*.whl")
    return built


def test_wheel_holds_every_part_its_package_data_and_no_tests(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for module in (
        "ftlct/agent/cli.py",
        "ftlct/agent/dicom/scp.py",
        "ftlct/cloud/cli.py",
        "ftlct/cloud/dashboard/http_server.py",
        "ftlct/export/build.py",
        "ftlct/protocol/envelope.py",
        "ftlct/bench/cli.py",
    ):
        assert module in names, module  # fmt: skip
    assert "ftlct/cloud/dashboard/dashboard.css" in names  # read through importlib.resources
    # every non-Python file in a part's folder is in the wheel
    for part in ("agent", "cloud", "export", "protocol", "bench"):
        for path in (REPO / part).rglob("*"):
            if (
                path.is_file()
                and path.suffix not in (".py", ".pyc")
                and "__pycache__" not in path.parts
            ):
                assert f"ftlct/{path.relative_to(REPO)}" in names, path  # fmt: skip
    assert not any(n.startswith(("tests/", "models/", "deploy/")) for n in names)
    (entry_points,) = [n for n in names if n.endswith("entry_points.txt")]
    scripts = zipfile.ZipFile(wheel).read(entry_points).decode()
    for program in ("ftl-agent", "ftl-cloud", "ftl-export", "ftl-bench"):
        assert f"{program} = ftlct." in scripts


def test_wheel_installs_into_a_clean_venv_and_serves(wheel, imagenet_weights, tmp_path):
    venv = tmp_path / "venv"
    outside = tmp_path / "elsewhere"  # no source tree on any path the programs see
    outside.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{venv / 'bin'}:/usr/bin:/bin"
    run(sys.executable, "-m", "venv", venv, cwd=outside)
    pip = venv / "bin" / "pip"
    run(pip, "install", "--quiet", TORCH, cwd=outside, env=env)
    run(pip, "install", "--quiet", wheel, cwd=outside, env=env)
    where = run(venv / "bin" / "python", "-c", "import ftlct.agent; print(ftlct.agent.__file__)",
                cwd=outside, env=env)  # fmt: skip
    assert where.stdout.strip().startswith(str(venv)), where.stdout

    model = outside / "model"
    run(venv / "bin" / "ftl-export", "build", "--out", model, "--labels", "normal,abnormal",
        "--weights", imagenet_weights, cwd=outside, env=env)  # fmt: skip
    assert json.loads((model / "manifest.json").read_text())["labels"] == ["normal", "abnormal"]

    data, port = outside / "agent-data", free_port()
    series = write_series(tmp_path / "study", "abnormal", n_slices=3, seed=11)
    log = (tmp_path / "agent.log").open("wb")
    agent = subprocess.Popen(
        [venv / "bin" / "ftl-agent", "serve", "--data-dir", data, "--model", model,
         "--host", LOOPBACK, "--port", str(port)],
        cwd=outside, env={**env, "FTLCT_AGENT_SERIES_QUIET_PERIOD_S": "1"},
        stdout=log, stderr=log, start_new_session=True,
    )  # fmt: skip
    log.close()
    try:
        wait_for_port(port, proc=agent, timeout=120)
        sent = storescu("-aec", "FTLCT", LOOPBACK, str(port), *map(str, series.paths))
        assert sent.returncode == 0, sent.stderr

        def results():
            shown = subprocess.run(
                [venv / "bin" / "ftl-agent", "results", "--data-dir", data, "--json"],
                cwd=outside, env=env, capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            return json.loads(shown.stdout) if shown.returncode == 0 else None

        (row,) = wait_for(results, timeout=180, interval=1.0)
        assert row["series_uid"] == series.series_uid and row["n_instances"] == 3
        assert set(row["probabilities"]) == {"normal", "abnormal"}
        assert row["model_version"] == json.loads((model / "manifest.json").read_text())["version"]
    finally:
        agent.terminate()
        try:
            agent.wait(timeout=60)
        except subprocess.TimeoutExpired:
            agent.kill()
