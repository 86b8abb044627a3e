"""``ftl-cloud doctor``: each failure is found, said with its fix, and fails the run;
the broker is a real mosquitto."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

import pytest

from ftlct.cloud.doctor import diagnose
from ftlct.cloud.state import RoundRow, StateStore
from ftlct.protocol.identity import load_or_create_identity
from tests.support.ports import LOOPBACK, free_port


def errors(report, check: str) -> list:
    return [f for f in report.findings if f.check == check and f.level == "error"]


def levels(report, check: str) -> set[str]:
    return {f.level for f in report.findings if f.check == check}


@pytest.fixture
def cloud(tmp_path, mosquitto_broker, tiny_model):
    """A state dir with the cloud's key and two enrolled sites, a model, a running broker."""
    state = tmp_path / "state"
    load_or_create_identity(state / "keys", "cloud")
    state.chmod(0o700)
    store = StateStore.open(state)
    store.sites.enroll("a", "A" * 44)
    store.sites.enroll("b", "B" * 44)
    store.close()
    flags = {
        "state_dir": str(state),
        "broker": mosquitto_broker.url,
        "federation": "fed",
        "model": str(tiny_model.path),
    }
    return {"state": state, "flags": flags, "model": tiny_model.path}


def test_a_ready_cloud_has_no_error(cloud):
    report = diagnose(None, cloud["flags"])
    assert not report.failed, report.render()
    assert levels(report, "broker") == {"ok"} and levels(report, "sites") == {"ok"}


def test_unknown_strategy_is_a_config_error(cloud):
    report = diagnose(None, {**cloud["flags"], "strategy": "fedmagic"})
    (finding,) = report.findings
    assert finding.level == "error" and "fedmagic" in finding.message


def test_cloud_key_readable_by_others_is_an_error(cloud):
    key = cloud["state"] / "keys" / "cloud.ed25519"
    key.chmod(0o644)
    assert errors(diagnose(None, cloud["flags"]), "keys")[0].fix == f"chmod 600 {key}"


def test_state_dir_open_to_others_is_an_error(cloud):
    cloud["state"].chmod(0o755)
    assert errors(diagnose(None, cloud["flags"]), "state dir")[0].fix.startswith("chmod 700")


def test_state_of_another_federation_is_an_error(cloud):
    store = StateStore.open(cloud["state"])
    store.meta.set("federation", "other")
    store.close()
    (finding,) = errors(diagnose(None, cloud["flags"]), "state dir")
    assert (
        "belongs to federation 'other'" in finding.message and "--federation other" in finding.fix
    )


def test_damaged_state_database_is_an_error(cloud):
    (cloud["state"] / "cloud.sqlite").write_bytes(b"SQLite format 3\x00" + b"\xff" * 4000)
    (finding,) = errors(diagnose(None, cloud["flags"]), "state dir")
    assert "restore the last backup" in finding.fix


def test_unreachable_broker_is_an_error(cloud):
    report = diagnose(None, {**cloud["flags"], "broker": f"mqtt://{LOOPBACK}:{free_port()}"})
    assert "cannot reach" in errors(report, "broker")[0].message


def test_broken_model_directory_is_an_error(cloud):
    (cloud["model"] / "backbone.onnx").write_bytes(b"another backbone")
    (finding,) = errors(diagnose(None, cloud["flags"]), "model")
    assert "backbone.onnx: sha256 differs" in finding.message


def test_too_few_sites_for_min_sites_is_a_warning(cloud):
    report = diagnose(None, {**cloud["flags"], "min_sites": 3})
    assert levels(report, "sites") == {"warning"} and not report.failed


def test_clock_gone_back_behind_the_last_round_is_an_error(cloud):
    store = StateStore.open(cloud["state"])
    later = time.time() + 7200
    store.rounds.add(
        RoundRow(1, "open", "ftl", later, later + 600, 0, {}, {}, "global", None, None)
    )
    store.close()
    (finding,) = errors(diagnose(None, cloud["flags"]), "clock")
    assert "clock went back" in finding.message


def test_dashboard_port_taken_by_another_program_is_an_error(cloud):
    with socket.socket() as squatter:
        squatter.bind((LOOPBACK, 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        report = diagnose(None, {**cloud["flags"], "http": f"{LOOPBACK}:{port}"}, timeout=2)
    assert "another program" in errors(report, "dashboard")[0].message


def test_running_dashboard_is_recognised(cloud):
    from ftlct.cloud.dashboard.http_server import DashboardServer

    with DashboardServer(cloud["state"], LOOPBACK, 0) as dashboard:
        host, port = dashboard.address
        report = diagnose(None, {**cloud["flags"], "http": f"{host}:{port}"})
    assert levels(report, "dashboard") == {"ok"}


def test_cli_exits_non_zero_with_json(cloud):
    args = [sys.executable, "-m", "ftlct.cloud", "doctor", "--state-dir", str(cloud["state"]),
            "--broker", f"mqtt://{LOOPBACK}:{free_port()}", "--federation", "fed",
            "--model", str(cloud["model"])]  # fmt: skip
    result = subprocess.run([*args, "--json"], capture_output=True, text=True, timeout=120)
    data = json.loads(result.stdout)
    assert result.returncode == 1 and not data["ok"]
    assert any(c["check"] == "broker" and c["level"] == "error" for c in data["checks"])
    text = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert text.returncode == 1 and "fix: start the broker" in text.stdout
