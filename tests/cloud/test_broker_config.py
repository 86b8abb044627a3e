"""``ftl-cloud broker-config`` on a real mosquitto: TLS, passwords and ACLs hold."""

from __future__ import annotations

import getpass
import json
import subprocess
import sys
import tomllib

import numpy as np
import pytest

from ftlct.cloud.mosquitto_config import mosquitto_password_hash
from ftlct.cloud.state import StateStore
from ftlct.protocol.identity import load_or_create_identity
from ftlct.protocol.mqtt_connection import MqttSettings
from tests.cloud.harness import FED, CloudProcess, MqttPeer, ScriptedSite, delta, wait_until
from tests.support.mosquitto import running_mosquitto
from tests.support.ports import free_port


@pytest.fixture(scope="module")
def tls_broker(tmp_path_factory):
    out = tmp_path_factory.mktemp("broker")
    port = free_port()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "ftlct.cloud",
            "broker-config",
            "--sites",
            "a,b",
            "--out",
            str(out),
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--run-as",
            getpass.getuser(),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    written = json.loads(result.stdout)
    with running_mosquitto(out, conf_path=out / "mosquitto.conf", port=port, tls=True) as broker:
        yield broker, written


def settings_of(written, user) -> MqttSettings:
    """The generated ``clients/USER/mqtt.toml`` as the settings object agent and cloud use."""
    with open(f"{written['clients'][user]}/mqtt.toml", "rb") as handle:
        return MqttSettings(**tomllib.load(handle)["mqtt"])


def _peer(broker, written, user, **changes) -> MqttPeer:
    settings = settings_of(written, user)
    for key, value in changes.items():
        setattr(settings, key, value)
    return MqttPeer(f"test-{user}-{len(changes)}", broker.url, settings)


def test_password_hash_has_mosquittos_format():
    line = mosquitto_password_hash("secret", salt=bytes(12), iterations=101)
    assert line.startswith("$7$101$AAAAAAAAAAAAAAAA$") and len(line.split("$")[-1]) == 88


def test_client_without_certificate_or_password_is_refused(tls_broker):
    broker, written = tls_broker
    # TLS with the CA but no client certificate (and no password): the broker drops it
    with pytest.raises(ConnectionRefusedError):
        _peer(
            broker, written, "a", cert_file="", key_file="", username="", password_file=""
        ).connect()
    # a valid certificate but no password: CONNACK says not authorized
    with pytest.raises(ConnectionRefusedError, match=r"[Nn]ot authorized"):
        _peer(broker, written, "a", username="", password_file="").connect()
    # the right user with a wrong password
    with pytest.raises(ConnectionRefusedError, match=r"[Nn]ot authorized|[Bb]ad user"):
        _peer(broker, written, "a", password_file="", password="wrong").connect()
    # plain MQTT on the TLS port gets nowhere either
    plain = MqttPeer("plain", broker.url.replace("mqtts://", "mqtt://"), MqttSettings())
    with pytest.raises((ConnectionRefusedError, AssertionError)):
        plain.connect(timeout=5)


def test_site_cannot_write_another_sites_topic_nor_read_updates(tls_broker):
    broker, written = tls_broker
    cloud = _peer(broker, written, "cloud").connect()
    site_a = _peer(broker, written, "a").connect()
    site_b = _peer(broker, written, "b").connect()
    try:
        cloud.subscribe("ftl/+/updates/#")
        site_a.subscribe("ftl/+/updates/#")  # mosquitto grants it; the ACL filters delivery
        site_a.subscribe("ftl/+/rounds/#")
        site_a.publish(f"ftl/{FED}/updates/b", b"forged by a")  # not a's topic
        site_a.publish(f"ftl/{FED}/updates/a", b"a's own update")
        site_b.publish(f"ftl/{FED}/updates/b", b"b's own update")
        cloud.publish(f"ftl/{FED}/rounds/current", b"round marker")
        # messages from one connection are routed in order: once the later ones are in,
        # the earlier forbidden ones would have been too
        wait_until(lambda: cloud.messages(f"ftl/{FED}/updates/b"), what="b's update at the cloud")
        wait_until(lambda: cloud.messages(f"ftl/{FED}/updates/a"), what="a's update at the cloud")
        wait_until(lambda: site_a.messages(f"ftl/{FED}/rounds/current"), what="round at a")
        assert cloud.messages(f"ftl/{FED}/updates/b") == [b"b's own update"]
        assert (
            site_a.messages(f"ftl/{FED}/updates/b") == []
            and site_a.messages(f"ftl/{FED}/updates/a") == []
        )
    finally:
        for peer in (cloud, site_a, site_b):
            peer.close()


def test_a_round_over_tls_with_the_generated_credentials(tls_broker, tmp_path, tiny_model):
    broker, written = tls_broker
    state = tmp_path / "state"
    sites = {
        n: ScriptedSite(n, tmp_path / "keys", broker.url, settings_of(written, n)) for n in "ab"
    }
    store = StateStore.open(state)
    for name, site in sites.items():
        store.sites.enroll(name, site.identity.public_b64)
    store.close()
    config = f"{written['clients']['cloud']}/mqtt.toml"  # an [mqtt] table: usable as --config
    cloud = CloudProcess(
        state,
        [
            "--config",
            config,
            "--broker",
            broker.url,
            "--federation",
            FED,
            "--model",
            str(tiny_model.path),
            "--min-sites",
            "2",
        ],
    ).start()
    try:
        for site in sites.values():
            site.connect().subscribe(f"ftl/{FED}/#")
        wait_until(lambda: sites["a"].messages(f"ftl/{FED}/rounds/current"), what="round over TLS")
        sites["a"].send(sites["a"].update(1, "v0", delta(1.0, (0, 0)), n=1))
        sites["b"].send(sites["b"].update(1, "v0", delta(3.0, (0, 0)), n=1))
        status = cloud.wait_status(lambda s: s.get("rounds_completed") == 1 and s, what="round 1")
        key = load_or_create_identity(state / "keys", "cloud").public_b64
        model = wait_until(
            lambda: (m := sites["b"].global_model(key)) and m.round == 1 and m, what="model"
        )
        np.testing.assert_allclose(model.weights["dense.0.weight"], np.full((2, 4), 2.0))
        assert status["updates_rejected"] == {}
    finally:
        cloud.stop()
        for site in sites.values():
            site.close()
