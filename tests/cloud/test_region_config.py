"""``broker-config --region``: the bridge's topic table, the central files it edits, bad input."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ftlct.cloud import broker_bridge
from ftlct.cloud.broker_bridge import central_acl_block, write_region_config
from ftlct.cloud.mosquitto_config import write_broker_config


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ftlct.cloud", "broker-config", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def central(tmp_path):
    write_broker_config(tmp_path / "central", ["direct"], 8883, "127.0.0.1")
    return tmp_path / "central"


def test_receipts_go_to_each_site_of_the_region_and_only_there():
    acl = central_acl_block("eu", ["a", "b"])
    assert "topic read ftl/+/receipts/a\ntopic read ftl/+/receipts/b" in acl
    section = broker_bridge.bridge_section("eu", ["a", "b"], "c:8883", Path("/x"), None)
    assert "topic ftl/+/receipts/a in 1" in section and "topic ftl/+/receipts/b in 1" in section
    assert "receipts/#" not in section and "remote_password" not in section


def test_a_per_site_topic_added_to_the_table_is_bridged_and_allowed_for_each_site(monkeypatch):
    monkeypatch.setattr(
        broker_bridge, "BRIDGE_TOPICS", (*broker_bridge.BRIDGE_TOPICS, ("audit/{site}", "out"))
    )
    acl = central_acl_block("eu", ["a", "b"])
    assert "topic write ftl/+/audit/a\ntopic write ftl/+/audit/b" in acl
    section = broker_bridge.bridge_section("eu", ["a", "b"], "c:8883", Path("/x"), "p")
    assert "topic ftl/+/audit/a out 1" in section and "remote_password p" in section
    assert section.count("topic ftl/+/rounds/# in 1") == 1  # shared topics once, not per site


def test_region_keeps_the_central_users_and_replaces_its_own_on_a_rerun(central, tmp_path):
    write_region_config(tmp_path / "eu", "eu", ["a"], central, "127.0.0.1:8883")
    write_region_config(tmp_path / "eu", "eu", ["a", "b"], central, "127.0.0.1:8883")
    if (central / "passwd").is_file():  # a central broker that checks passwords
        passwd = (central / "passwd").read_text().splitlines()
        assert [line.split(":")[0] for line in passwd] == ["cloud", "direct", "region-eu"]
    acl = (central / "acl").read_text()
    assert acl.count("user region-eu") == 1 and "updates/b" in acl and "user direct" in acl
    assert oct((central / "acl").stat().st_mode & 0o777) == "0o600"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--region", "eu", "--sites", "a"], "--region needs --central"),
        (["--sites", "a", "--central", "x"], "go with --region"),
        (["--region", "eu", "--sites", "a", "--central", "{tmp}/nothing",
          "--central-address", "h:8883"], "no ca.crt"),
        (["--region", "eu", "--sites", "a", "--central", "{central}",
          "--central-address", "no-port"], "HOST:PORT"),
        (["--region", "e u", "--sites", "a", "--central", "{central}",
          "--central-address", "h:8883"], "region name"),
        (["--region", "eu", "--sites", "region-eu", "--central", "{central}",
          "--central-address", "h:8883"], "bridge's user name"),
    ],
)  # fmt: skip
def test_bad_region_input_is_one_line(central, tmp_path, args, message):
    filled = [a.format(tmp=tmp_path, central=central) for a in args]
    result = cli(*filled, "--out", str(tmp_path / "out"))
    assert result.returncode != 0 and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
