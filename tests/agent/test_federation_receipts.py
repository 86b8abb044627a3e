"""End to end delivery with real processes: an update the broker acknowledged but nobody
received (the cloud away, its session gone with a broker restart) stays in the agent's outbox
and is resent, with backoff, until the restarted ``ftl-cloud serve`` counts it and its signed
receipt reaches the agent; the cloud counts it exactly once."""

from __future__ import annotations

import contextlib

import pytest

from ftlct.agent.store.database import Database
from ftlct.cloud.state import StateStore
from ftlct.protocol.topics import Topics
from tests.agent.federation_peers import (
    AGENT_ENV,
    FED,
    Recorder,
    agent_cli,
    agent_status,
    cloud_cli,
    cloud_status,
    enrolled_agent,
    send,
)
from tests.agent.synthetic_ct import labels_csv, write_study_set
from tests.cloud.harness import CloudProcess
from tests.support.dicom_peers import wait_for
from tests.support.mosquitto import running_mosquitto

SITE = "site-r"
ENV = {
    **AGENT_ENV,
    "FTLCT_AGENT_FEDERATION_RESEND_INITIAL_S": "1",
    "FTLCT_AGENT_FEDERATION_RESEND_MAX_S": "2",
}


def at_broker(data_dir) -> list[str]:
    """Update ids the broker has PUBACKed (the first time is recorded)."""
    db = Database(data_dir / "index.sqlite", create=False)
    try:
        rows = db.query("SELECT update_id FROM federation_updates WHERE acked_at IS NOT NULL")
        return [row["update_id"] for row in rows]
    finally:
        db.close()


@pytest.mark.slow
def test_an_update_lost_after_the_brokers_puback_is_resent_until_the_clouds_receipt(
    tmp_path, model_dir
):
    with contextlib.ExitStack() as stack:
        broker = stack.enter_context(running_mosquitto(tmp_path / "broker"))
        state = tmp_path / "cloud-state"
        cloud_key = cloud_cli("identity", "--state-dir", str(state)).stdout.strip()
        agent = enrolled_agent(
            stack, tmp_path, SITE, model_dir.path, broker.url, state, cloud_key, env=ENV
        )
        data_dir = agent.data_dir
        studies = write_study_set(tmp_path / SITE / "studies", per_class=3, seed=11)
        cloud_args = [
            "--broker", broker.url, "--federation", FED, "--model", str(model_dir.path),
            "--strategy", "ftl", "--min-sites", "1", "--round-timeout", "600", "--rounds", "1",
        ]  # fmt: skip
        cloud = CloudProcess(state, cloud_args).start()
        stack.callback(cloud.stop)
        send(agent, [p for s in studies for p in s.paths])
        wait_for(lambda: len(agent.results()) == 6, timeout=180)
        wait_for(lambda: agent_status(data_dir)["federation"]["global_versions"], timeout=60)
        assert agent_status(data_dir)["federation"]["last_round"] == 1

        # The cloud goes away and a broker restart (no persistence) drops its session: what
        # the agent publishes now, the broker acknowledges and nobody receives.
        cloud.stop()
        broker.stop()
        broker = stack.enter_context(
            running_mosquitto(tmp_path / "broker", conf_path=broker.conf, port=broker.port)
        )
        recorder = Recorder(broker.url)
        stack.callback(recorder.close)
        wait_for(lambda: agent_status(data_dir)["federation"]["connected"], timeout=60)
        csv = labels_csv(tmp_path / SITE / "labels.csv", studies)
        imported = agent_cli("label", "import", str(csv), "--data-dir", str(data_dir))
        assert imported.returncode == 0, imported.stderr

        topic = Topics(FED).updates(SITE)
        wait_for(lambda: len(recorder.payloads(topic)) >= 3, timeout=240)  # sent, resent, resent
        (update_id,) = at_broker(data_dir)  # PUBACKed...
        status = agent_status(data_dir)
        assert status["outbox"] == 1  # ...and still waiting for the cloud
        assert status["federation"]["updates_acknowledged"] == 0
        assert cloud_status(state)["updates_this_round"] == []  # nothing reached the cloud

        cloud = CloudProcess(state, cloud_args).start()  # back: it re-announces round 1
        stack.callback(cloud.stop)
        wait_for(lambda: agent_status(data_dir)["outbox"] == 0, timeout=120)
        fed = agent_status(data_dir)["federation"]
        assert fed["updates_acknowledged"] == 1
        assert fed["updates_receipted"]["accepted"] + fed["updates_receipted"]["duplicate"] == 1
        assert fed["receipts_ignored"] == {}
        assert cloud.process.wait(timeout=120) == 0, cloud.log()[-3000:]

        report = cloud_status(state)
        assert report["rounds_completed"] == 1 and report["updates_rejected"] == {}
        store = StateStore.open_existing(state)
        try:
            assert store.updates.sites_of_round(1) == [SITE]  # counted once
        finally:
            store.close()
        copies = recorder.payloads(topic)
        assert len(copies) >= 4 and len(set(copies)) == 1  # one update, resent as stored
        assert at_broker(data_dir) == [update_id]
