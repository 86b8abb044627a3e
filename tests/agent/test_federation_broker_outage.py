"""The broker goes away for 30 s while both agents train: their outboxes deliver once it is back,
and the cloud counts each site's update exactly once."""

from __future__ import annotations

import contextlib
import time

import pytest

from ftlct.cloud.state import StateStore
from tests.agent.federation_peers import (
    FED,
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

SITES = ("site-a", "site-b")
OUTAGE_S = 30.0


@pytest.mark.slow
def test_outboxes_deliver_after_a_30_s_broker_outage_and_each_site_counts_once(tmp_path, model_dir):
    with contextlib.ExitStack() as stack:
        broker = stack.enter_context(running_mosquitto(tmp_path / "broker"))
        state = tmp_path / "cloud-state"
        cloud_key = cloud_cli("identity", "--state-dir", str(state)).stdout.strip()
        agents, studies = {}, {}
        for index, site in enumerate(SITES):
            agents[site] = enrolled_agent(
                stack, tmp_path, site, model_dir.path, broker.url, state, cloud_key
            )
            studies[site] = write_study_set(
                tmp_path / site / "studies", per_class=3, seed=index + 7
            )
        cloud = CloudProcess(
            state,
            [
                "--broker", broker.url, "--federation", FED, "--model", str(model_dir.path),
                "--strategy", "ftl", "--min-sites", "2", "--round-timeout", "300", "--rounds", "1",
            ],
            env={"FTLCT_CLOUD_MQTT_RECONNECT_MAX_S": "2"},
        ).start()  # fmt: skip
        stack.callback(cloud.stop)
        for site in SITES:
            send(agents[site], [p for s in studies[site] for p in s.paths])
        for site in SITES:
            wait_for(lambda s=site: len(agents[s].results()) == 6, timeout=120)
            wait_for(
                lambda s=site: agent_status(agents[s].data_dir)["federation"]["last_round"] == 1, 60
            )

        broker.stop()
        down_at = time.monotonic()
        for site in SITES:  # labels while the broker is away: the agents train for round 1
            csv = labels_csv(tmp_path / site / "labels.csv", studies[site])
            result = agent_cli(
                "label", "import", str(csv), "--data-dir", str(agents[site].data_dir)
            )
            assert result.returncode == 0, result.stderr
        for site in SITES:
            wait_for(lambda s=site: agent_status(agents[s].data_dir)["outbox"] == 1, timeout=25)
        time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - down_at)))
        for site in SITES:  # nothing acknowledged, nothing removed
            status = agent_status(agents[site].data_dir)
            assert status["outbox"] == 1 and status["federation"]["updates_acknowledged"] == 0
            assert not status["federation"]["connected"]
        assert cloud_status(state)["updates_this_round"] == []

        stack.enter_context(
            running_mosquitto(tmp_path / "broker", conf_path=broker.conf, port=broker.port)
        )
        assert cloud.process.wait(timeout=60) == 0, cloud.log()[-3000:]

        report = cloud_status(state)
        assert report["rounds_completed"] == 1 and report["updates_rejected"] == {}
        store = StateStore.open_existing(state)
        try:
            # one stored update per site (the list is not DISTINCT: a double would show twice)
            assert store.updates.sites_of_round(1) == list(SITES)
        finally:
            store.close()
        for site in SITES:
            wait_for(lambda s=site: agent_status(agents[s].data_dir)["outbox"] == 0, timeout=20)
            fed = agent_status(agents[site].data_dir)["federation"]
            assert fed["updates_made"] == 1 == fed["updates_acknowledged"]
