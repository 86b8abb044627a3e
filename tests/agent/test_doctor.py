"""``ftl-agent doctor``: every failure it knows is found, said with its fix, and fails the run.

Brokers are real mosquittos (plain, and TLS from ``ftl-cloud broker-config``);
the result destination is dcmtk's storescp; the round is signed like the cloud's.
"""

from __future__ import annotations

import getpass
import json
import shutil
import socket
import subprocess
import sys
import time
import tomllib

import pytest

from ftlct.agent.doctor import diagnose
from ftlct.protocol.exchange import build_round
from ftlct.protocol.identity import load_or_create_identity
from ftlct.protocol.messages import RoundAnnouncement
from tests.cloud.harness import MqttPeer, make_tiny_model
from tests.support.dicom_peers import running_agent
from tests.support.mosquitto import plain_config, running_mosquitto
from tests.support.paths import require_program
from tests.support.ports import LOOPBACK, free_port, wait_for_port

FED = "docfed"
SITE = "site-d"


def levels(report, check: str) -> set[str]:
    return {f.level for f in report.findings if f.check == check}


def errors(report, check: str) -> list:
    return [f for f in report.findings if f.check == check and f.level == "error"]


@pytest.fixture
def mosquitto_broker(tmp_path):
    with running_mosquitto(tmp_path / "mosquitto") as broker:
        yield broker


@pytest.fixture
def box(tmp_path):
    """A data dir with the site's key and a model directory that matches its manifest."""
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    load_or_create_identity(data / "keys", SITE)
    model = make_tiny_model(tmp_path / "model")
    return {"data": data, "model": model.path, "tmp": tmp_path}


def overrides(box, **more) -> dict:
    base = {
        "storage.data_dir": box["data"],
        "inference.model_dir": box["model"],
        "dicom.port": free_port(),
        "storage.min_free_bytes": 1024,
    }
    return {**base, **more}


def test_a_healthy_box_without_federation_has_no_error(box):
    report = diagnose(None, overrides(box))
    assert not report.failed, report.render()
    assert levels(report, "model") == {"ok"} and levels(report, "disk") == {"ok"}


def test_bad_settings_are_the_one_error(tmp_path):
    config = tmp_path / "agent.toml"
    config.write_text("[series]\nquiet_period = 5\n")
    report = diagnose(config, {})
    (finding,) = report.findings
    assert finding.level == "error" and "quiet_period" in finding.message
    assert "deploy/agent.toml" in finding.fix


def test_private_key_readable_by_others_is_an_error_with_the_chmod(box):
    key = box["data"] / "keys" / f"{SITE}.ed25519"
    key.chmod(0o644)
    report = diagnose(None, overrides(box))
    (finding,) = errors(report, "keys")
    assert str(key) in finding.message and finding.fix == f"chmod 600 {key}"
    assert report.failed


def test_mqtt_password_file_open_to_others_is_an_error(box):
    password = box["tmp"] / "password"
    password.write_text("secret\n")
    password.chmod(0o604)
    report = diagnose(None, overrides(box, **{"mqtt.password_file": str(password)}))
    assert errors(report, "keys")[0].fix == f"chmod 640 {password}"


def test_broken_model_directory_is_an_error(box):
    (box["model"] / "head.onnx").write_bytes(b"not the head the manifest hashed")
    report = diagnose(None, overrides(box))
    (finding,) = errors(report, "model")
    assert "head.onnx: sha256 differs" in finding.message and "ftl-export" in finding.fix


def test_missing_model_directory_is_an_error(box):
    report = diagnose(None, overrides(box, **{"inference.model_dir": box["tmp"] / "nothing"}))
    assert "not a model directory" in errors(report, "model")[0].message


def test_disk_below_the_watermark_is_an_error(box):
    report = diagnose(None, overrides(box, **{"storage.min_free_bytes": "1000TB"}))
    (finding,) = errors(report, "disk")
    assert "storage.min_free_bytes" in finding.message and "df -h" in finding.fix


def test_dicom_port_taken_by_another_program_is_an_error(box):
    with socket.socket() as squatter:
        squatter.bind((LOOPBACK, 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        report = diagnose(None, overrides(box, **{"dicom.port": port}), timeout=2)
    (finding,) = errors(report, "dicom port")
    assert "another program" in finding.message and f"sport = :{port}" in finding.fix


def test_unreachable_broker_is_an_error(box):
    cloud = load_or_create_identity(box["tmp"] / "cloud", "cloud")
    fed = {
        "federation.broker": f"mqtt://{LOOPBACK}:{free_port()}",
        "federation.site": SITE,
        "federation.name": FED,
        "federation.cloud_key": cloud.public_b64,
    }
    report = diagnose(None, overrides(box, **fed), timeout=2)
    (finding,) = errors(report, "broker")
    assert "cannot reach" in finding.message and "nc -vz" in finding.fix


def test_missing_site_key_is_an_error_with_the_identity_command(box):
    shutil.rmtree(box["data"] / "keys")
    cloud = load_or_create_identity(box["tmp"] / "cloud", "cloud")
    fed = {
        "federation.broker": f"mqtt://{LOOPBACK}:{free_port()}",
        "federation.site": SITE,
        "federation.name": FED,
        "federation.cloud_key": cloud.public_b64,
    }
    report = diagnose(None, overrides(box, **fed), timeout=2)
    assert "ftl-agent identity --site site-d" in errors(report, "keys")[0].fix


def _announce(broker, opened_at: float, deadline: float, key_dir) -> str:
    cloud = load_or_create_identity(key_dir, "cloud")
    announcement = RoundAnnouncement(
        round=3, strategy="ftl", deadline=deadline, opened_at=opened_at,
        base_versions={"global": "v0"},
    )  # fmt: skip
    peer = MqttPeer("announcer", broker.url).connect()
    peer.publish(f"ftl/{FED}/rounds/current", build_round(cloud, FED, announcement), retain=True)
    peer.close()
    return cloud.public_b64


def _federation(broker, key: str) -> dict:
    return {
        "federation.broker": broker.url,
        "federation.site": SITE,
        "federation.name": FED,
        "federation.cloud_key": key,
    }


def test_clock_behind_the_rounds_time_is_an_error(box, mosquitto_broker):
    now = time.time()
    key = _announce(mosquitto_broker, now + 3600, now + 4200, box["tmp"] / "cloud")
    report = diagnose(None, overrides(box, **_federation(mosquitto_broker, key)))
    assert levels(report, "broker") == {"ok"} and levels(report, "round") == {"ok"}
    (finding,) = errors(report, "clock")
    assert "behind the cloud's" in finding.message and "timedatectl" in finding.fix


def test_clock_in_step_with_the_round_and_a_wrong_cloud_key(box, mosquitto_broker):
    now = time.time()
    key = _announce(mosquitto_broker, now - 10, now + 600, box["tmp"] / "cloud")
    report = diagnose(None, overrides(box, **_federation(mosquitto_broker, key)))
    assert levels(report, "clock") == {"ok"}
    other = load_or_create_identity(box["tmp"] / "other", "cloud").public_b64
    report = diagnose(None, overrides(box, **_federation(mosquitto_broker, other)))
    assert "does not verify" in errors(report, "round")[0].message


@pytest.fixture(scope="module")
def tls_broker(tmp_path_factory):
    out = tmp_path_factory.mktemp("tls-broker")
    port = free_port()
    result = subprocess.run(
        [sys.executable, "-m", "ftlct.cloud", "broker-config", "--sites", SITE, "--out", str(out),
         "--port", str(port), "--bind", LOOPBACK, "--run-as", getpass.getuser(), "--json"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    with running_mosquitto(out, conf_path=out / "mosquitto.conf", port=port, tls=True) as broker:
        yield broker, out


def _tls_settings(out, **changes) -> dict:
    with open(out / "clients" / SITE / "mqtt.toml", "rb") as handle:
        mqtt = tomllib.load(handle)["mqtt"]
    mqtt.update(changes)
    return {f"mqtt.{k}": v for k, v in mqtt.items()}


def test_tls_broker_with_the_generated_credentials_logs_in(box, tls_broker):
    broker, out = tls_broker
    fed = {**_federation(broker, load_or_create_identity(box["tmp"] / "c", "cloud").public_b64)}
    report = diagnose(None, overrides(box, **fed, **_tls_settings(out)))
    assert levels(report, "broker") == {"ok"}, report.render()
    messages = " ".join(f.message for f in report.findings if f.check == "broker")
    assert "TLS" in messages and f"logged in as {SITE}" in messages
    assert levels(report, "round") == {"warning"}  # no cloud has announced a round


def test_tls_broker_with_another_ca_is_a_tls_error(box, tls_broker, tmp_path):
    broker, out = tls_broker
    from ftlct.cloud.pki import make_ca

    stranger = tmp_path / "stranger-ca.crt"
    stranger.write_bytes(make_ca("someone else").cert_pem())
    fed = _federation(broker, load_or_create_identity(box["tmp"] / "c", "cloud").public_b64)
    report = diagnose(None, overrides(box, **fed, **_tls_settings(out, ca_file=str(stranger))))
    (finding,) = errors(report, "broker")
    assert "certificate is not accepted" in finding.message and "ca_file" in finding.fix


@pytest.fixture
def password_broker(tmp_path):
    """A plain mosquitto that takes only SITE with its password (a broker not from broker-config)."""
    work = tmp_path / "password-broker"
    work.mkdir()
    passwords = work / "passwords"
    subprocess.run(
        ["/usr/bin/mosquitto_passwd", "-b", "-c", str(passwords), SITE, "the-password"],
        check=True, capture_output=True, timeout=30,
    )  # fmt: skip
    port = free_port()
    conf = work / "mosquitto.conf"
    conf.write_text(
        plain_config(port).replace("allow_anonymous true", "allow_anonymous false")
        + f"password_file {passwords}\n"
    )
    with running_mosquitto(work, conf_path=conf, port=port) as broker:
        yield broker


def _password_settings(tmp_path, password: str) -> dict:
    secret = tmp_path / f"password-{len(password)}"
    secret.write_text(password + "\n")
    secret.chmod(0o600)
    return {"mqtt.username": SITE, "mqtt.password_file": str(secret)}


def test_a_broker_refusing_the_password_is_a_login_error_and_the_right_one_logs_in(
    box, password_broker, tmp_path
):
    fed = _federation(
        password_broker, load_or_create_identity(box["tmp"] / "c", "cloud").public_b64
    )
    wrong = diagnose(None, overrides(box, **fed, **_password_settings(tmp_path, "not-it")))
    (finding,) = errors(wrong, "broker")
    assert "refused the login" in finding.message and "password_file" in finding.fix
    right = diagnose(None, overrides(box, **fed, **_password_settings(tmp_path, "the-password")))
    assert not errors(right, "broker"), right.render()
    assert f"logged in as {SITE}" in " ".join(f.message for f in right.findings)


def test_tls_broker_without_a_client_certificate_is_an_error(box, tls_broker):
    broker, out = tls_broker
    fed = _federation(broker, load_or_create_identity(box["tmp"] / "c", "cloud").public_b64)
    changes = _tls_settings(out, cert_file="", key_file="")
    report = diagnose(None, overrides(box, **fed, **changes))
    (finding,) = errors(report, "broker")
    assert "certificate" in finding.message + finding.fix, report.render()


def test_result_destination_that_does_not_answer_is_an_error(box):
    destination = f"PACS@{LOOPBACK}:{free_port()}"
    report = diagnose(None, overrides(box, **{"results.destination": destination}), timeout=2)
    (finding,) = errors(report, "ae")
    assert destination in finding.message and "echoscu -aet FTLCT -aec PACS" in finding.fix


def test_result_destination_answering_c_echo_is_ok(box, tmp_path):
    storescp = require_program("/usr/bin/storescp")
    port = free_port()
    out = tmp_path / "scp"
    out.mkdir()
    peer = subprocess.Popen(
        [storescp, "-aet", "PACS", "-od", str(out), str(port)],
        env={"TCP_NODELAY": "1", "PATH": "/usr/bin:/bin"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, proc=peer, timeout=20)
        report = diagnose(
            None, overrides(box, **{"results.destination": f"PACS@{LOOPBACK}:{port}"})
        )
    finally:
        peer.terminate()
        peer.wait(timeout=10)
    assert levels(report, "ae") == {"ok"}, report.render()


def test_cli_prints_the_fix_and_exits_non_zero_and_json_lists_every_check(box):
    key = box["data"] / "keys" / f"{SITE}.ed25519"
    key.chmod(0o640)
    args = [sys.executable, "-m", "ftlct.agent", "doctor", "--data-dir", str(box["data"]),
            "--model", str(box["model"]), "--port", str(free_port())]  # fmt: skip
    env_run = {"capture_output": True, "text": True, "timeout": 120}
    text = subprocess.run(args, **env_run)
    assert text.returncode == 1 and f"fix: chmod 600 {key}" in text.stdout
    as_json = subprocess.run([*args, "--json"], **env_run)
    data = json.loads(as_json.stdout)
    assert as_json.returncode == 1 and data["ok"] is False and data["errors"] >= 1
    assert {"config", "disk", "model", "keys"} <= {c["check"] for c in data["checks"]}
    key.chmod(0o600)
    fixed = subprocess.run(args, **env_run)
    assert fixed.returncode == 0, fixed.stdout


@pytest.mark.parametrize("allow", [[], ["PACS"]])
def test_dicom_port_held_by_the_running_agent_is_fine(box, model_path, tmp_path, allow):
    extra = [arg for ae in allow for arg in ("--allow-ae", ae)]
    with running_agent(tmp_path / "agent", model_path, *extra) as agent:
        report = diagnose(
            None, overrides(box, **{"dicom.port": agent.port, "dicom.allow_ae": allow})
        )
    assert levels(report, "dicom port") == {"ok"}, report.render()


def test_a_cloud_key_that_is_no_public_key_is_a_config_error(box):
    fed = {
        "federation.broker": f"mqtt://{LOOPBACK}:{free_port()}",
        "federation.site": SITE,
        "federation.name": FED,
        "federation.cloud_key": "not-a-key",
    }
    report = diagnose(None, overrides(box, **fed), timeout=2)
    (finding,) = errors(report, "config")
    assert "federation.cloud_key" in finding.message and "ftl-cloud identity" in finding.fix
