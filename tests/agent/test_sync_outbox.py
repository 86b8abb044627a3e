"""The update outbox is durable: an update waits through an unreachable broker and a restart,
and leaves the outbox only once the broker has acknowledged it."""

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


def queue_update(data_root) -> bytes:
    """An update as a finished local round leaves it: ledger row + outbox row, one transaction."""
    payload = build_update(
        site_identity(data_root, SITE),
        FED,
        round=1,
        base_version="v0",
        cluster="global",
        n_samples=12,
        delta=zero_head(),
        update_id="a1b2c3d4e5f6",
    )
    db = Database(data_root / "index.sqlite")
    outbox = Outbox(db)
    update = MadeUpdate(
        "a1b2c3d4e5f6", 1, "global", "v0", 12, "fp32", {}, Topics(FED).updates(SITE), payload
    )
    with db.transaction() as conn:
        outbox.queue(conn, update, time.time())
    db.close()
    return payload


def test_an_update_survives_an_unreachable_broker_and_a_restart(tmp_path, model_dir):
    layout, _ = site_with_embeddings(tmp_path / "agent-data", per_class=1, slices=1)
    payload = queue_update(layout.root)
    port = free_port()
    url = f"mqtt://127.0.0.1:{port}"
    args = federation_args(url, SITE, ScriptedCloud(tmp_path / "cloud-keys", FED).key)
    with running_agent(
        tmp_path, model_dir.path, *args, env=AGENT_ENV, data_dir=layout.root
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
                wait_for(lambda: agent_status(agent.data_dir)["outbox"] == 0, timeout=30)
                sent = recorder.payloads(Topics(FED).updates(SITE))
                assert sent and all(p == payload for p in sent)  # the stored bytes, unchanged
                fed = agent_status(agent.data_dir)["federation"]
                assert fed["updates_acknowledged"] == 1 and fed["connected"]
            finally:
                recorder.close()
