"""Scale-out: agents on a regional mosquitto, bridged over TLS to the central one the cloud uses.

Both brokers come from ``ftl-cloud broker-config`` (central, then ``--region``),
both are real mosquittos, the agents are real ``ftl-agent serve`` and the cloud
a real ``ftl-cloud serve``: a round completes through the bridge and both twin
states arrive at the cloud. The central ACL keeps the bridge to its region's sites.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from ftlct.protocol.mqtt_connection import MqttSettings
from tests.agent.federation_peers import (
    AGENT_ENV,
    agent_cli,
    cloud_cli,
    cloud_status,
    enroll,
    send,
)
from tests.agent.synthetic_ct import labels_csv, write_study_set
from tests.cloud.harness import CloudProcess, MqttPeer, wait_until
from tests.support.dicom_peers import running_agent, wait_for
from tests.support.mosquitto import running_mosquitto
from tests.support.ports import free_port

FED = "scaled"
REGION = "eu"
SITES = ("north", "south")


def broker_config(*args: str) -> dict:
    result = subprocess.run(
        [sys.executable, "-m", "ftlct.cloud", "broker-config", *args, "--bind", "127.0.0.1",
         "--run-as", getpass.getuser(), "--json"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def mqtt_settings(toml_path: str | Path) -> MqttSettings:
    with open(toml_path, "rb") as handle:
        return MqttSettings(**tomllib.load(handle)["mqtt"])


@pytest.fixture(scope="module")
def brokers(tmp_path_factory):
    root = tmp_path_factory.mktemp("scale-out")
    central_port, region_port = free_port(), free_port()
    central = broker_config("--sites", "direct", "--out", str(root / "central"),
                            "--port", str(central_port))  # fmt: skip
    region = broker_config(
        "--region", REGION, "--sites", ",".join(SITES), "--out", str(root / "region"),
        "--port", str(region_port), "--central", str(root / "central"),
        "--central-address", f"127.0.0.1:{central_port}",
    )  # fmt: skip
    with contextlib.ExitStack() as stack:
        central_broker = stack.enter_context(
            running_mosquitto(root / "central", Path(central["conf"]), central_port, tls=True)
        )
        region_broker = stack.enter_context(
            running_mosquitto(root / "region", Path(region["conf"]), region_port, tls=True)
        )
        wait_until(
            lambda: (
                "Connecting bridge" in region_broker.log()
                and f"region-{REGION}" in central_broker.log()
            ),
            what="bridge connected",
        )
        yield {
            "root": root,
            "central": (central_broker, central),
            "region": (region_broker, region),
        }


def test_region_command_writes_a_bridge_with_the_regions_topics_only(brokers):
    _, region = brokers["region"]
    conf = Path(region["conf"]).read_text()
    for site in SITES:
        assert f"topic ftl/+/updates/{site} out 1" in conf
        assert f"topic ftl/+/twins/{site}/# out 1" in conf
        assert f"topic ftl/+/receipts/{site} in 1" in conf  # the cloud's receipts come back
    assert "topic ftl/+/rounds/# in 1" in conf and "topic ftl/+/model/# in 1" in conf
    assert "topic ftl/+/best/# in 1" in conf  # agents serving the best version read it
    assert "updates/direct" not in conf and "cleansession false" in conf
    acl = (brokers["root"] / "central" / "acl").read_text()
    assert f"user region-{REGION}\ntopic write ftl/+/updates/north" in acl
    assert "user direct" in acl  # the central broker's own users are kept
    assert oct(Path(region["conf"]).stat().st_mode & 0o777) == "0o600"


def test_bridge_user_cannot_write_a_site_outside_its_region(brokers):
    central_broker, central = brokers["central"]
    _, region = brokers["region"]
    bridge = Path(region["bridge"])
    user = f"region-{REGION}"
    password = bridge / "password"  # only where the central broker checks passwords
    settings = MqttSettings(
        username=user,
        password_file=str(password) if password.is_file() else "",
        ca_file=str(bridge / "central-ca.crt"),
        cert_file=str(bridge / f"{user}.crt"),
        key_file=str(bridge / f"{user}.key"),
    )
    cloud = MqttPeer(
        "acl-cloud", central_broker.url, mqtt_settings(central["clients"]["cloud"] + "/mqtt.toml")
    )
    intruder = MqttPeer("acl-bridge-user", central_broker.url, settings)
    cloud.connect().subscribe(f"ftl/{FED}/updates/#")
    intruder.connect()
    try:
        intruder.publish(f"ftl/{FED}/updates/direct", b"forged for another region's site")
        intruder.publish(f"ftl/{FED}/updates/north", b"its own region's site")
        wait_until(lambda: cloud.messages(f"ftl/{FED}/updates/north"), what="allowed message")
        assert cloud.messages(f"ftl/{FED}/updates/direct") == []
    finally:
        cloud.close()
        intruder.close()


def test_round_completes_through_the_bridge_and_twins_arrive(brokers, model_dir, tmp_path):
    central_broker, central = brokers["central"]
    region_broker, region = brokers["region"]
    state = tmp_path / "cloud-state"
    cloud_key = cloud_cli("identity", "--state-dir", str(state)).stdout.strip()
    with contextlib.ExitStack() as stack:
        agents, studies = {}, {}
        for index, site in enumerate(SITES):
            data_dir = tmp_path / site / "agent-data"
            enroll(data_dir, site, state)
            agents[site] = stack.enter_context(
                running_agent(
                    tmp_path / site,
                    model_dir.path,
                    "--config",
                    f"{region['clients'][site]}/mqtt.toml",
                    "--broker",
                    region_broker.url,
                    "--site",
                    site,
                    "--federation",
                    FED,
                    "--cloud-key",
                    cloud_key,
                    env=AGENT_ENV,
                    data_dir=data_dir,
                )
            )
            studies[site] = write_study_set(
                tmp_path / site / "studies", per_class=3, seed=index + 7
            )
        cloud = CloudProcess(
            state,
            ["--config", f"{central['clients']['cloud']}/mqtt.toml", "--broker", central_broker.url,
             "--federation", FED, "--model", str(model_dir.path), "--min-sites", "2",
             "--round-timeout", "120", "--rounds", "1"],
        ).start()  # fmt: skip
        stack.callback(cloud.stop)
        for site in SITES:
            send(agents[site], [p for s in studies[site] for p in s.paths])
        for site in SITES:
            wait_for(lambda s=site: len(agents[s].results()) == 6, timeout=120)
            imported = agent_cli(
                "label", "import", str(labels_csv(tmp_path / site / "labels.csv", studies[site])),
                "--data-dir", str(agents[site].data_dir),
            )  # fmt: skip
            assert imported.returncode == 0, imported.stderr
        assert cloud.process.wait(timeout=240) == 0, cloud.log()[-3000:]
        final = cloud_status(state)
        assert final["rounds_completed"] == 1 and final["updates_rejected"] == {}
        newest = final["global_versions"]["global"]
        for site in SITES:
            # the new global head came back through the bridge and was installed
            wait_for(lambda s=site: agents[s].status()["model_version"] == newest, timeout=60)
        twins = wait_for(
            lambda: (
                (s := cloud_status(state)["sites"])
                and all(s[n]["online"] and s[n]["last_seen"] for n in SITES)
                and s
            ),
            timeout=60,
        )
        for site in SITES:
            assert twins[site]["counts"]["series_inferred"] == 6
