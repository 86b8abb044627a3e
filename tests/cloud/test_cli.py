"""ftl-cloud's command-line contract: --help everywhere, one-line errors, the commands' output."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import pytest

from ftlct.protocol.identity import load_or_create_identity


def _run(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "ftlct.cloud", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


@pytest.mark.parametrize(
    "command", [[], ["serve"], ["status"], ["identity"], ["enroll"], ["broker-config"]]
)
def test_every_command_has_help(command):
    result = _run(*command, "--help")
    assert result.returncode == 0 and "Usage:" in result.stdout


def _one_line_error(result, needle):
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("ftl-cloud: error:") and needle in lines[0], lines[0]


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["serve", "--broker", "tcp://127.0.0.1:1"], "mqtt:// or mqtts://"),
        (["serve", "--broker", "mqtt://user:pw@127.0.0.1:1"], "not the URL"),
        (["serve", "--strategy", "krum"], "unknown strategy 'krum'"),
        (["serve", "--federation", "a/b"], "federation name"),
        (["serve", "--config", "/nonexistent.toml"], "no such file"),
        (["serve", "--min-sites", "0"], "--min-sites"),
        (["serve", "--log-level", "LOUD"], "--log-level"),
        (["serve", "--initial-weights", "/tmp/unused.safetensors"], "--strategy ftl federates"),
        (
            ["serve", "--strategy", "fedavg", "--model", "m", "--initial-weights", "w"],
            "not both",
        ),
        (["status", "--state-dir", "/nonexistent/state"], "no cloud state"),
        (["enroll", "site-a", "not-a-key", "--state-dir", "/tmp/unused"], "public key"),
        (["enroll", "a/b", "AAAA", "--state-dir", "/tmp/unused"], "site name"),
        (["broker-config", "--sites", ",", "--out", "/tmp/unused-broker"], "--sites"),
        (["broker-config", "--sites", "a,cloud", "--out", "/tmp/unused-broker"], "cloud"),
    ],
)
def test_bad_input_gives_one_line_and_nonzero_exit(args, needle):
    _one_line_error(_run(*args), needle)


def test_unknown_config_keys_and_bad_env_values_are_reported(tmp_path):
    config = tmp_path / "cloud.toml"
    config.write_text("min_sites = 2\nround_timout = 5\n")
    _one_line_error(_run("serve", "--config", str(config)), "unknown setting 'round_timout'")
    env = {**os.environ, "FTLCT_CLOUD_MIN_SITES": "many"}
    _one_line_error(_run("serve", env=env), "FTLCT_CLOUD_MIN_SITES")
    env = {**os.environ, "FTLCT_CLOUD_LIMITS_MAX_SITE_SHARE": "0"}
    _one_line_error(_run("serve", env=env), "max_site_share in (0, 1]")


def test_new_federation_without_a_model_is_a_one_line_error(tmp_path):
    result = _run(
        "serve",
        "--state-dir",
        str(tmp_path / "s"),
        "--model",
        str(tmp_path / "none"),
        "--broker",
        "mqtt://127.0.0.1:1",
    )
    _one_line_error(result, "not a model directory")


def test_bad_initial_weights_are_one_line_errors_before_connecting(tmp_path):
    from tests.cloud.harness import network, write_network_file

    def serve(weights, *extra):
        return _run(
            "serve", "--state-dir", str(tmp_path / "s"), "--broker", "mqtt://127.0.0.1:1",
            "--initial-weights", str(weights), *extra,
        )  # fmt: skip

    _one_line_error(serve(tmp_path / "none.safetensors", "--strategy", "fedavg"), "no such file")
    unlabelled = write_network_file(tmp_path / "n.safetensors", network(), labels=["only"])
    _one_line_error(serve(unlabelled, "--strategy", "fedavg"), "metadata 'labels'")
    good = write_network_file(tmp_path / "g.safetensors", network())
    config = tmp_path / "clip.toml"
    config.write_text('[strategy_params]\nmax_norm = 1.0\ninner = "ftl"\n')
    wrapped_ftl = serve(good, "--strategy", "norm_clipping", "--config", str(config))
    _one_line_error(wrapped_ftl, "cannot federate")


def test_identity_is_stable_and_enroll_reports_what_changed(tmp_path):
    state = str(tmp_path / "state")
    first = _run("identity", "--state-dir", state)
    assert first.returncode == 0 and len(first.stdout.strip()) == 44
    assert _run("identity", "--state-dir", state).stdout == first.stdout
    key1 = load_or_create_identity(tmp_path / "k1", "x").public_b64
    key2 = load_or_create_identity(tmp_path / "k2", "x").public_b64
    assert _run("enroll", "x", key1, "--state-dir", state).stdout.strip() == "enrolled x"
    assert "already enrolled" in _run("enroll", "x", key1, "--state-dir", state).stdout
    assert "re-enrolled x with a new key" in _run("enroll", "x", key2, "--state-dir", state).stdout
    status = json.loads(_run("status", "--state-dir", state, "--json").stdout)
    assert status["sites"]["x"] == {
        **status["sites"]["x"],
        "enrolled": True,
        "online": False,
        "model_version": None,
        "last_seen": None,
    }
    for key in ("round", "rounds_completed", "global_versions", "sites", "updates_rejected"):
        assert key in status


def test_broker_config_writes_private_credentials(tmp_path):
    out = tmp_path / "broker"
    result = _run("broker-config", "--sites", "a,b", "--out", str(out), "--port", "18883")
    assert result.returncode == 0, result.stderr
    assert "credentials for a:" in result.stdout and "mosquitto -c" in result.stdout
    for private in ("ca.key", "server.key", "clients/a/a.key", "clients/a/mqtt.toml", "acl"):
        assert stat.S_IMODE((out / private).stat().st_mode) == 0o600, private
    acl = (out / "acl").read_text()
    assert "user a\ntopic write ftl/+/updates/a\ntopic write ftl/+/twins/a/#" in acl
    assert "topic read ftl/+/receipts/a\n" in acl and "receipts/b" not in acl.split("user b")[0]
    assert "user cloud\ntopic readwrite ftl/#" in acl
    conf = (out / "mosquitto.conf").read_text()
    assert "allow_anonymous false" in conf and "require_certificate true" in conf
    assert "use_identity_as_username true" in conf and "password_file" not in conf
    assert "listener 18883 0.0.0.0" in conf
    assert sorted(p.name for p in (out / "clients").iterdir()) == ["a", "b", "cloud"]
    assert not list(out.rglob("*passw*"))  # the certificate is the identity
