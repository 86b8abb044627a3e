"""``ftl-cloud broker-config`` on a real mosquitto: TLS, passwords and ACLs hold."""

from __future__ import annotations

import getpass
import json
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest

from ftlct.cloud.state import StateStore
from ftlct.protocol.identity import load_or_create_identity
from ftlct.protocol.mqtt_connection import MqttSettings
from ftlct.protocol.topics import Topics
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
    from ftlct.cloud.mosquitto_config import mosquitto_password_hash

    line = mosquitto_password_hash("secret", salt=bytes(12), iterations=101)
    assert line.startswith("$7$101$AAAAAAAAAAAAAAAA$") and len(line.split("$")[-1]) == 88


def test_client_without_its_certificate_is_refused_and_the_certificate_alone_suffices(tls_broker):
    broker, written = tls_broker
    # TLS with the CA but no client certificate: the broker drops it, username or not
    with pytest.raises(ConnectionRefusedError):
        _peer(broker, written, "a", cert_file="", key_file="", username="a").connect()
    # plain MQTT on the TLS port gets nowhere either
    plain = MqttPeer("plain", broker.url.replace("mqtts://", "mqtt://"), MqttSettings())
    with pytest.raises((ConnectionRefusedError, AssertionError)):
        plain.connect(timeout=5)
    # the identity is the certificate: no username, no password needed
    _peer(broker, written, "a").connect().close()


def test_another_sites_certificate_with_a_sites_username_cannot_post_as_a(tls_broker):
    """Issue 10, point 5: on main, b's certificate plus a's password published on updates/a."""
    broker, written = tls_broker
    cloud = _peer(broker, written, "cloud").connect()
    a_password = Path(written["clients"]["a"]) / "password"  # where broker-config wrote one
    crossed = _peer(
        broker,
        written,
        "b",
        username="a",
        password_file=str(a_password) if a_password.is_file() else "",
        password="" if a_password.is_file() else "a's leaked password",
    )
    try:
        cloud.subscribe("ftl/+/updates/#")
        crossed.connect()
        crossed.publish(f"ftl/{FED}/updates/a", b"junk posted as a")
        crossed.publish(f"ftl/{FED}/updates/b", b"b's own topic")  # in order: the marker
        wait_until(
            lambda: (
                cloud.messages(f"ftl/{FED}/updates/b") or cloud.messages(f"ftl/{FED}/updates/a")
            ),
            what="the marker (or, on main, the junk) at the cloud",
        )
        assert cloud.messages(f"ftl/{FED}/updates/a") == []
    finally:
        crossed.close()
        cloud.close()


def test_broker_config_sizes_the_queues_for_the_fleet(tmp_path):
    from ftlct.cloud.mosquitto_config import max_queued_messages, write_broker_config

    assert max_queued_messages(3) == 1000 and max_queued_messages(2000) == 20_000
    files = write_broker_config(tmp_path / "b", [f"s{i}" for i in range(150)])
    assert "max_queued_messages 1500" in files.conf.read_text()


def test_site_cannot_write_another_sites_topic_nor_read_updates(tls_broker):
    broker, written = tls_broker
    cloud = _peer(broker, written, "cloud").connect()
    site_a = _peer(broker, written, "a").connect()
    site_b = _peer(broker, written, "b").connect()
    try:
        cloud.subscribe("ftl/+/updates/#")
        cloud.subscribe("ftl/+/receipts/#")
        site_a.subscribe("ftl/+/updates/#")  # mosquitto grants it; the ACL filters delivery
        site_a.subscribe("ftl/+/rounds/#")
        site_a.subscribe("ftl/+/receipts/#")  # granted; only a's own receipts are delivered
        site_a.subscribe("ftl/+/best/#")  # the best version so far (training.serve = best)
        site_a.publish(f"ftl/{FED}/updates/b", b"forged by a")  # not a's topic
        site_a.publish(f"ftl/{FED}/receipts/b", b"a receipt forged by a")  # only the cloud may
        site_a.publish(f"ftl/{FED}/best/global", b"a best model forged by a")  # nor here
        site_a.publish(f"ftl/{FED}/updates/a", b"a's own update")
        site_b.publish(f"ftl/{FED}/updates/b", b"b's own update")
        cloud.publish(f"ftl/{FED}/receipts/b", b"b's receipt")
        cloud.publish(f"ftl/{FED}/receipts/a", b"a's receipt")
        cloud.publish(f"ftl/{FED}/best/global", b"the cloud's best model")
        cloud.publish(f"ftl/{FED}/rounds/current", b"round marker")
        # messages from one connection are routed in order: once the later ones are in,
        # the earlier forbidden ones would have been too
        wait_until(lambda: cloud.messages(f"ftl/{FED}/updates/b"), what="b's update at the cloud")
        wait_until(lambda: cloud.messages(f"ftl/{FED}/updates/a"), what="a's update at the cloud")
        wait_until(lambda: site_a.messages(f"ftl/{FED}/rounds/current"), what="round at a")
        assert site_a.messages(f"ftl/{FED}/best/global") == [b"the cloud's best model"]
        assert cloud.messages(f"ftl/{FED}/updates/b") == [b"b's own update"]
        assert (
            site_a.messages(f"ftl/{FED}/updates/b") == []
            and site_a.messages(f"ftl/{FED}/updates/a") == []
        )
        assert site_a.messages(f"ftl/{FED}/receipts/a") == [b"a's receipt"]
        assert site_a.messages(f"ftl/{FED}/receipts/b") == []
        wait_until(lambda: cloud.messages(f"ftl/{FED}/receipts/a"), what="a's receipt at the cloud")
        assert cloud.messages(f"ftl/{FED}/receipts/b") == [b"b's receipt"]  # not a's forgery
    finally:
        for peer in (cloud, site_a, site_b):
            peer.close()


def test_what_an_agent_subscribes_to_is_delivered_under_the_acl_and_no_other_sites_receipts(
    tls_broker,
):
    """The agent's own subscriptions (``Topics.site_subscriptions``) fit the generated ACL:
    its round, models and receipts arrive; site b's receipts do not."""
    broker, written = tls_broker
    cloud = _peer(broker, written, "cloud").connect()
    site_a = _peer(broker, written, "a").connect()
    topics = Topics(FED)
    try:
        for topic in topics.site_subscriptions("a"):
            site_a.subscribe(topic)
        cloud.publish(topics.receipts("b"), b"b's receipt")
        cloud.publish(topics.model("global"), b"a model")
        cloud.publish(topics.receipts("a"), b"a's receipt")
        cloud.publish(topics.rounds_current, b"round marker")
        wait_until(lambda: site_a.messages(topics.rounds_current), what="round at a")
        assert site_a.messages(topics.receipts("a")) == [b"a's receipt"]
        assert site_a.messages(topics.model("global")) == [b"a model"]
        assert site_a.messages(topics.receipts("b")) == []
    finally:
        for peer in (cloud, site_a):
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
