"""2,000 light sites through a real mosquitto with its default limits: every update counted once.

On main the cloud verified and stored each message before acknowledging it,
so mosquitto queued the rest for it and, past ``max_queued_messages`` (1000
by default), dropped them: 1,065 of 2,000 arrived and the round never closed
(1,056 when this test was run against main, unpaced). The fleet keeps at most
500 updates not yet durable at the cloud, as many sites sending at once do,
rather than one loop outrunning the socket reader of any Python client.
"""

from __future__ import annotations

import numpy as np
import pytest

from ftlct.bench.light_fleet import FleetConnection, LightFleet, stored_by
from ftlct.cloud.state import StateStore
from ftlct.protocol import exchange
from ftlct.protocol.identity import load_or_create_identity
from tests.cloud.harness import FED, CloudProcess, ScriptedSite, wait_until

SITES = 2000


@pytest.mark.slow
def test_two_thousand_sites_each_publishing_once_close_the_round_with_each_counted_once(
    tmp_path, mosquitto_broker, tiny_model
):
    assert "max_queued_messages" not in mosquitto_broker.conf.read_text()  # the defaults
    state = tmp_path / "state"
    fleet = LightFleet(FED, SITES)
    store = StateStore.open(state)
    fleet.enroll(store)
    store.close()
    args = ["--broker", mosquitto_broker.url, "--federation", FED, "--model", str(tiny_model.path)]
    args += ["--strategy", "fedavg", "--min-sites", str(SITES), "--round-timeout", "600"]
    cloud = CloudProcess(state, args).start()
    connection = FleetConnection(mosquitto_broker.url, FED).connect()
    watcher = ScriptedSite("watcher", tmp_path / "keys", mosquitto_broker.url).connect()
    try:
        watcher.subscribe(f"ftl/{FED}/#")
        wait_until(lambda: watcher.messages(f"ftl/{FED}/rounds/current"), what="round 1")
        sent = fleet.updates(1, "v0")
        connection.publish_once(sent, stored_by(state))
        status = cloud.wait_status(
            lambda s: s.get("rounds_completed") == 1 and s, timeout=120, what="round 1 closed"
        )
        assert status["messages"] == {"accepted": SITES}, status["messages"]
        assert status["updates_rejected"] == {} and status["updates_duplicate"] == 0
        store = StateStore.open_existing(state)
        try:
            assert store.updates.count_of_round(1) == SITES
            assert store.rounds.last().round == 2 and store.models.count_of_round(1) == 1
        finally:
            store.close()
        key = load_or_create_identity(state / "keys", "cloud").public_b64
        model = wait_until(
            lambda: (m := watcher.global_model(key)) and m.round == 1 and m, what="head r1"
        )
        # every site's delta is (index % 5) on every coordinate, equal weights: mean 2.0
        np.testing.assert_allclose(model.weights["dense.0.weight"], np.full((2, 4), 2.0))
        receipts = wait_until(
            lambda: len(r := connection.received_receipts()) >= SITES and r, what="receipts"
        )
        opened = [exchange.open_receipt(r, key, FED) for r in receipts]
        assert len(opened) == SITES and {r.outcome for r in opened} == {"accepted"}
        sent_ids = {exchange.peek(data).payload["update_id"] for data in sent.values()}
        assert {r.update_id for r in opened} == sent_ids
        assert "dropped" not in mosquitto_broker.log().lower()
    finally:
        cloud.stop()
        connection.close()
        watcher.close()
