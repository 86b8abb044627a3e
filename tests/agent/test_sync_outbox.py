"""The update outbox is durable and end to end: an update waits through an unreachable broker
and a restart, is resent with backoff while the broker's PUBACK is all it has, and leaves the
outbox only on the cloud's signed receipt (or when its round closes)."""

from __future__ import annotations

import time

from ftlct.agent.store.database import Database
from ftlct.agent.sync.outbox import MadeUpdate, Outbox
from ftlct.agent.sync.site_identity import site_identity
from ftlct.protocol.exchange import build_update
from ftlct.protocol.topics import Topics
from tests.agent.federation_peers import AGENT_ENV, FED, Recorder, agent_status, federation_args
from tests.agent.federation_support import ScriptedCloud, site_with_embeddings, zero_head
from tests.support.dicom_peers import running_agent, wait_for
from tests.support.mosquitto import plain_config, running_mosquitto
from tests.support.ports import free_port

SITE = "site-o"
FAST_RESEND = {
    **AGENT_ENV,
    "FTLCT_AGENT_FEDERATION_RESEND_INITIAL_S": "1",
    "FTLCT_AGENT_FEDERATION_RESEND_MAX_S": "2",
}


def queue_update(data_root, update_id: str = "a1b2c3d4e5f6", cluster: str = "global") -> bytes:
    """An update as a finished local round leaves it: ledger row + outbox row, one transaction."""
    payload = build_update(
        site_identity(data_root, SITE),
        FED,
        round=1,
        base_version="v0",
        cluster=cluster,
        n_samples=12,
        delta=zero_head(),
        update_id=update_id,
    )
    db = Database(data_root / "index.sqlite")
    outbox = Outbox(db)
    update = MadeUpdate(
        update_id, 1, cluster, "v0", 12, "fp32", {}, Topics(FED).updates(SITE), payload
    )
    with db.transaction() as conn:
        outbox.queue(conn, update, time.time())
    db.close()
    return payload


def broker_acknowledged(data_root) -> dict[str, float | None]:
    db = Database(data_root / "index.sqlite", create=False)
    try:
        rows = db.query("SELECT update_id, acked_at FROM federation_updates")
        return {row["update_id"]: row["acked_at"] for row in rows}
    finally:
        db.close()


def test_an_update_survives_an_unreachable_broker_and_a_restart(tmp_path, model_dir):
    layout, _ = site_with_embeddings(tmp_path / "agent-data", per_class=1, slices=1)
    payload = queue_update(layout.root)
    port = free_port()
    url = f"mqtt://127.0.0.1:{port}"
    cloud = ScriptedCloud(tmp_path / "cloud-keys", FED)
    args = federation_args(url, SITE, cloud.key)
    with running_agent(
        tmp_path, model_dir.path, *args, env=FAST_RESEND, data_dir=layout.root
    ) as agent:
        time.sleep(3)  # serve tries to connect meanwhile
        status = agent_status(agent.data_dir)
        assert status["outbox"] == 1 and not status["federation"]["connected"]
        assert agent.terminate() == 0
        assert agent_status(agent.data_dir)["outbox"] == 1  # a stop loses nothing

        conf = tmp_path / "broker.conf"
        conf.write_text(plain_config(port))
        with running_mosquitto(tmp_path / "broker", conf_path=conf, port=port) as broker:
            recorder = Recorder(broker.url)
            try:
                agent.restart()
                topic = Topics(FED).updates(SITE)
                wait_for(lambda: len(recorder.payloads(topic)) >= 1, timeout=30)
                assert all(p == payload for p in recorder.payloads(topic))  # the stored bytes
                recorder.client.publish(
                    Topics(FED).receipts(SITE),
                    cloud.receipt(SITE, "a1b2c3d4e5f6", 1, "accepted"),
                    qos=1,
                )
                wait_for(lambda: agent_status(agent.data_dir)["outbox"] == 0, timeout=30)
                fed = agent_status(agent.data_dir)["federation"]
                assert fed["updates_acknowledged"] == 1 and fed["connected"]
            finally:
                recorder.close()


def test_the_brokers_puback_alone_keeps_an_update_resending_until_the_clouds_receipt(
    tmp_path, model_dir
):
    """PUBACKs arrive, nobody else answers: the rows stay and go out again and again, with
    backoff; junk receipts (wrong signer, another site, an unknown update, bytes) change
    nothing and are counted; an accepted receipt ends one update, a rejected one another
    (its reason kept), and a round that moves on ends the third without a receipt."""
    layout, _ = site_with_embeddings(tmp_path / "agent-data", per_class=1, slices=1)
    ids = {"accepted": "acc000000001", "rejected": "rej000000001", "closed": "cls000000001"}
    for cluster, update_id in zip(("global", "c1", "c2"), ids.values(), strict=True):
        queue_update(layout.root, update_id, cluster)
    cloud = ScriptedCloud(tmp_path / "cloud-keys", FED)
    forger = ScriptedCloud(tmp_path / "forger-keys", FED)
    with running_mosquitto(tmp_path / "broker") as broker:
        run_against(broker, layout, ids, cloud, forger, model_dir, tmp_path)


def run_against(broker, layout, ids, cloud, forger, model_dir, tmp_path) -> None:
    topics = Topics(FED)
    recorder = Recorder(broker.url)
    args = federation_args(broker.url, SITE, cloud.key)
    try:
        recorder.client.publish(topics.rounds_current, cloud.round(1, "v0"), qos=1, retain=True)
        with running_agent(
            tmp_path, model_dir.path, *args, env=FAST_RESEND, data_dir=layout.root
        ) as agent:
            copies = lambda: len(recorder.payloads(topics.updates(SITE)))  # noqa: E731
            wait_for(lambda: copies() >= 9, timeout=60)  # three updates, each 3 times or more
            acked = broker_acknowledged(agent.data_dir)
            assert all(acked[update_id] is not None for update_id in ids.values())
            fed = agent_status(agent.data_dir)["federation"]
            assert fed["updates_pending"] == 3 and fed["updates_acknowledged"] == 0

            receipts = topics.receipts(SITE)
            junk = [
                forger.receipt(SITE, ids["accepted"], 1, "accepted"),  # not the pinned key
                cloud.receipt("site-x", ids["accepted"], 1, "accepted"),  # another site's
                cloud.receipt(SITE, "feedfacecafe", 1, "accepted"),  # never made here
                b"\x00not an envelope",
            ]
            for payload in junk:
                recorder.client.publish(receipts, payload, qos=1)
            wait_for(
                lambda: (
                    sum(agent_status(agent.data_dir)["federation"]["receipts_ignored"].values())
                    == 4
                ),
                timeout=30,
            )
            fed = agent_status(agent.data_dir)["federation"]
            assert fed["receipts_ignored"] == {
                "bad_signature": 1,
                "wrong_site": 1,
                "unknown_update": 1,
                "malformed": 1,
            }, fed["receipts_ignored"]
            assert fed["updates_pending"] == 3

            recorder.client.publish(
                receipts, cloud.receipt(SITE, ids["accepted"], 1, "accepted"), qos=1
            )
            recorder.client.publish(
                receipts, cloud.receipt(SITE, ids["rejected"], 1, "rejected", "norm_bound"), qos=1
            )
            wait_for(lambda: agent_status(agent.data_dir)["outbox"] == 1, timeout=30)
            fed = agent_status(agent.data_dir)["federation"]
            assert fed["updates_acknowledged"] == 1
            assert fed["updates_receipted"]["rejected"] == 1
            assert fed["last_rejection"] == {
                "round": 1,
                "reason": "norm_bound",
                "update_id": ids["rejected"],
            }

            # the round moves on: the last update stops waiting, unreceipted
            recorder.client.publish(topics.rounds_current, cloud.round(2, "v1"), qos=1, retain=True)
            wait_for(lambda: agent_status(agent.data_dir)["outbox"] == 0, timeout=30)
            fed = agent_status(agent.data_dir)["federation"]
            assert fed["updates_receipted"] == {
                "accepted": 1,
                "duplicate": 0,
                "rejected": 1,
                "unreceipted": 1,
            }
            settled = copies()
            time.sleep(4)  # twice the longest wait: nothing is sent again
            assert copies() == settled
            assert agent.alive()
    finally:
        recorder.close()
