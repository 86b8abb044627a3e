"""``ftl-cloud serve`` as a real process on a real mosquitto, with scripted sites."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from ftlct.cloud.state import StateStore
from ftlct.protocol import exchange
from ftlct.protocol.identity import load_or_create_identity
from ftlct.protocol.mqtt_connection import MqttSettings, new_client, parse_broker_url
from ftlct.protocol.twin_state import TwinState
from tests.cloud.harness import FED, CloudProcess, ScriptedSite, delta, wait_until
from tests.support.mosquitto import plain_config, running_mosquitto
from tests.support.ports import free_port


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ftlct.cloud", *args], capture_output=True, text=True, timeout=60
    )


@pytest.fixture
def fleet(tmp_path, mosquitto_broker, tiny_model):
    """Cloud identity + sites a, b, c enrolled through the CLI, sites connected and listening."""
    state = tmp_path / "state"
    cloud_key = cli("identity", "--state-dir", str(state)).stdout.strip()
    sites = {}
    for name in "abc":
        sites[name] = ScriptedSite(name, tmp_path / "keys", mosquitto_broker.url)
        sites[name].connect().subscribe(f"ftl/{FED}/#")
    result = cli("enroll", "a", sites["a"].identity.public_b64, "--state-dir", str(state))
    assert result.returncode == 0 and result.stdout.strip() == "enrolled a", result.stderr
    store = StateStore.open(state)  # the same as the CLI, without two more interpreter starts
    for name in "bc":
        store.sites.enroll(name, sites[name].identity.public_b64)
    store.close()
    yield state, cloud_key, sites
    for site in sites.values():
        site.close()


def _serve(state, broker, model, *extra, env=None) -> CloudProcess:
    args = ["--broker", broker.url, "--federation", FED, "--model", str(model.path), *extra]
    return CloudProcess(state, args, env).start()


def test_three_sites_one_global_head_with_hand_checked_numbers(fleet, mosquitto_broker, tiny_model):
    state, cloud_key, sites = fleet
    cloud = _serve(
        state,
        mosquitto_broker,
        tiny_model,
        "--strategy",
        "fedavg",
        "--min-sites",
        "3",
        "--round-timeout",
        "60",
        "--rounds",
        "2",
    )
    try:
        a = sites["a"]
        first = wait_until(
            lambda: a.global_model(cloud_key, backbone=tiny_model.backbone_sha256),
            what="initial model",
        )
        assert first.version == "v0" and first.round == 0
        announced = wait_until(lambda: a.round(cloud_key), what="round 1")
        assert announced.round == 1 and announced.base_versions == {"global": "v0"}
        assert announced.strategy == "fedavg" and announced.training["max_delta_norm"] == 100.0

        sent_a = sites["a"].update(1, "v0", delta(1.0, (1, -1)), n=1)
        sites["a"].send(sent_a)
        sites["b"].send(sites["b"].update(1, "v0", delta(2.0, (0, 0)), n=1, codec="fp16"))
        sites["c"].send(sites["c"].update(1, "v0", delta(4.0, (-1, 1)), n=2, codec="int8"))

        model = wait_until(
            lambda: (
                (m := a.global_model(cloud_key, backbone=tiny_model.backbone_sha256))
                and m.round == 1
                and m
            ),
            what="round-1 global model",
        )
        # (1*1 + 1*2 + 2*4) / 4 = 2.75 (fp16 and int8 are exact for these values)
        np.testing.assert_allclose(model.weights["dense.0.weight"], np.full((2, 4), 2.75))
        np.testing.assert_allclose(model.weights["dense.0.bias"], [-0.25, 0.25])
        # the cloud, not the broker, acknowledged a's update: a signed receipt on a's topic
        receipt = exchange.open_receipt(
            wait_until(lambda: a.messages(a.topics.receipts("a")), what="receipt")[0],
            cloud_key,
            FED,
            site="a",
        )
        assert (receipt.update_id, receipt.round, receipt.outcome) == (
            exchange.peek(sent_a).payload["update_id"],
            1,
            "accepted",
        )
        # a site on another backbone refuses it
        with pytest.raises(exchange.ProtocolError, match="backbone"):
            a.global_model(cloud_key, backbone="f" * 64)

        status = json.loads(
            cli("status", "--state-dir", str(state), "--json").stdout
        )  # while serving
        assert status["round"] == 2 and status["rounds_completed"] == 1
        assert status["global_versions"] == {"global": model.version}
        assert set(status["sites"]) == {"a", "b", "c"} and status["updates_rejected"] == {}

        round2 = wait_until(
            lambda: (r := a.round(cloud_key)) and r.round == 2 and r, what="round 2"
        )
        for name in "abc":
            sites[name].send(
                sites[name].update(2, round2.base_versions["global"], delta(-1.0, (0, 0)), n=5)
            )
        assert cloud.process.wait(timeout=60) == 0, cloud.log()
        final = a.round(cloud_key)
        assert final.status == "finished" and final.round == 2
        np.testing.assert_allclose(
            a.global_model(cloud_key).weights["dense.0.weight"], np.full((2, 4), 1.75)
        )
    finally:
        cloud.stop()


def test_twin_states_and_last_will_reach_the_status(fleet, mosquitto_broker, tiny_model):
    state, _, sites = fleet
    cloud = _serve(state, mosquitto_broker, tiny_model, "--min-sites", "3")
    try:
        a = sites["a"]
        twin = TwinState(status="inferring", model_version="v0", outbox=1)
        a.publish(
            a.topics.twin_state("a"), exchange.build_twin_state(a.identity, FED, twin), retain=True
        )
        # site b connects with its will, then its connection dies without DISCONNECT
        b = sites["b"]
        doomed = new_client(
            "site-b-doomed",
            parse_broker_url(mosquitto_broker.url),
            MqttSettings(),
            will=(b.topics.twin_state("b"), exchange.build_offline_will(b.identity, FED, "v0")),
        )
        doomed.connect(mosquitto_broker.host, mosquitto_broker.port)
        doomed.loop_start()
        doomed.publish(
            b.topics.twin_state("b"),
            exchange.build_twin_state(b.identity, FED, TwinState(status="idle")),
            qos=1,
            retain=True,
        ).wait_for_publish(10)
        cloud.wait_status(
            lambda s: s.get("sites", {}).get("b", {}).get("online") is True, what="b online"
        )
        doomed.loop_stop()
        doomed.socket().close()  # no DISCONNECT: the broker publishes the will
        status = cloud.wait_status(
            lambda s: s["sites"]["b"]["online"] is False and s["sites"]["a"]["online"] and s,
            what="b offline",
        )
        assert (
            status["sites"]["a"]["model_version"] == "v0"
            and status["sites"]["a"]["status"] == "inferring"
        )
        assert status["sites"]["b"]["status"] == "offline"
        assert status["sites"]["c"]["last_seen"] is None
        table = cli("status", "--state-dir", str(state)).stdout
        assert "inferring" in table and "offline" in table
    finally:
        cloud.stop()


def test_site_enrolled_while_the_cloud_runs_is_accepted_without_restart(
    fleet, mosquitto_broker, tiny_model, tmp_path
):
    state, cloud_key, sites = fleet
    # quorum 2 of 4 enrolled: the round closes at its (short) deadline
    cloud = _serve(state, mosquitto_broker, tiny_model, "--min-sites", "2", "--round-timeout", "2")
    try:
        d = ScriptedSite("d", tmp_path / "keys", mosquitto_broker.url).connect()
        d.subscribe(f"ftl/{FED}/#")
        wait_until(lambda: d.round(cloud_key), what="round 1 at d")
        d.send(d.update(1, "v0", delta(1.0, (0, 0)), n=1))
        cloud.wait_status(
            lambda s: s.get("updates_rejected", {}).get("unknown_site") == 1, what="d refused"
        )
        assert cli("enroll", "d", d.identity.public_b64, "--state-dir", str(state)).returncode == 0
        d.send(d.update(1, "v0", delta(3.0, (0, 0)), n=1))
        cloud.wait_status(lambda s: s["updates_this_round"] == ["d"], what="d accepted")
        sites["a"].send(sites["a"].update(1, "v0", delta(1.0, (0, 0)), n=1))
        model = wait_until(
            lambda: (m := d.global_model(cloud_key)) and m.round == 1 and m, what="round 1 closed"
        )
        np.testing.assert_allclose(model.weights["dense.0.weight"], np.full((2, 4), 2.0))
        assert cloud.process.poll() is None
        d.close()
    finally:
        cloud.stop()


def test_cloud_reconnects_after_a_broker_restart_and_republishes_its_state(tmp_path, tiny_model):
    port = free_port()
    conf = tmp_path / "broker.conf"
    conf.write_text(
        plain_config(port)
    )  # no persistence: a restarted broker has lost every retained message
    state = tmp_path / "state"
    site_key = ScriptedSite("a", tmp_path / "keys", f"mqtt://127.0.0.1:{port}").identity.public_b64
    store = StateStore.open(state)
    store.sites.enroll("a", site_key)
    store.close()
    with running_mosquitto(tmp_path / "b1", conf_path=conf, port=port) as broker:
        cloud = _serve(state, broker, tiny_model, "--min-sites", "1")
        try:
            watcher = ScriptedSite("a", tmp_path / "keys", broker.url).connect()
            watcher.subscribe(f"ftl/{FED}/#")
            wait_until(lambda: watcher.messages(f"ftl/{FED}/rounds/current"), what="round 1")
            watcher.close()
        except BaseException:
            cloud.stop()
            raise
    try:
        with running_mosquitto(tmp_path / "b2", conf_path=conf, port=port) as broker:
            site = ScriptedSite("a", tmp_path / "keys", broker.url).connect()
            site.subscribe(f"ftl/{FED}/#")
            cloud_key = load_or_create_identity(state / "keys", "cloud").public_b64
            announced = wait_until(
                lambda: site.round(cloud_key), timeout=60, what="round re-published"
            )
            assert announced.round == 1 and site.global_model(cloud_key).version == "v0"
            site.send(site.update(1, "v0", delta(1.0, (0, 0)), n=1))
            cloud.wait_status(
                lambda s: s.get("rounds_completed") == 1, what="round 1 after reconnect"
            )
            site.close()
    finally:
        cloud.stop()
