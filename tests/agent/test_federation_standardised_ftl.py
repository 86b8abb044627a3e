"""A standardised FTL federation end to end: real mosquitto, ``ftl-cloud serve --strategy ftl``
with ``strategy_params = {standardise = true}`` and two ``ftl-agent serve``. Round 1: each site
sends the moments of its labelled embeddings and the head stays; round 2 announces the fleet's
mean and std, each site trains on standardised embeddings and sends a raw-space delta."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest

from ftlct.export.feature_moments import site_moments
from ftlct.protocol.exchange import open_round, peek
from tests.agent.federation_peers import (
    FED,
    Recorder,
    agent_status,
    cloud_cli,
    cloud_status,
    enrolled_agent,
    send_and_label,
    training_slices,
)
from tests.agent.synthetic_ct import write_study_set
from tests.cloud.harness import CloudProcess
from tests.support.dicom_peers import wait_for
from tests.support.mosquitto import running_mosquitto

SITES = ("site-a", "site-b")


@pytest.fixture(scope="module")
def federation(tmp_path_factory, model_dir):
    root = tmp_path_factory.mktemp("standardised-ftl")
    with contextlib.ExitStack() as stack:
        broker = stack.enter_context(running_mosquitto(root / "broker"))
        recorder = Recorder(broker.url)
        stack.callback(recorder.close)
        state = root / "cloud-state"
        cloud_key = cloud_cli("identity", "--state-dir", str(state)).stdout.strip()
        agents, studies = {}, {}
        for index, site in enumerate(SITES):
            agents[site] = enrolled_agent(
                stack, root, site, model_dir.path, broker.url, state, cloud_key
            )
            studies[site] = write_study_set(
                root / site / "studies", per_class=3 + index, seed=index + 11
            )
        config = root / "cloud.toml"
        config.write_text("strategy_params = {standardise = true}\n")
        cloud = CloudProcess(
            state,
            [
                "--config", str(config), "--broker", broker.url, "--federation", FED,
                "--model", str(model_dir.path), "--strategy", "ftl", "--min-sites", "2",
                "--round-timeout", "120", "--rounds", "2",
            ],
            env={"FTLCT_CLOUD_LIMITS_MAX_SITE_SHARE": "1.0"},  # the moments pooled as they are
        ).start()  # fmt: skip
        stack.callback(cloud.stop)
        send_and_label(root, agents, studies)
        assert cloud.process.wait(timeout=300) == 0, cloud.log()[-3000:]
        final = cloud_status(state)
        newest = final["global_versions"]["global"]
        for site in SITES:
            wait_for(lambda s=site: agent_status(agents[s].data_dir)["model_version"] == newest, 60)
        yield {
            "agents": agents,
            "cloud": final,
            "cloud_key": cloud_key,
            "newest": newest,
            "recorder": recorder,
            "model_dir": model_dir,
        }


def test_round_one_takes_moments_and_round_two_announces_the_pooled_mean_and_std(federation):
    cloud = federation["cloud"]
    assert cloud["rounds_completed"] == 2 and cloud["updates_rejected"] == {}
    updates = [
        peek(p).payload
        for t, p, _ in federation["recorder"].messages
        if t.startswith(f"ftl/{FED}/updates/")
    ]
    kinds = sorted((u["round"], u.get("kind", "delta"), u["site"]) for u in updates)
    assert kinds == [(1, "moments", s) for s in SITES] + [(2, "delta", s) for s in SITES]
    model_dir = federation["model_dir"]
    pooled = site_moments(training_slices(federation["agents"][SITES[0]], model_dir).vectors)
    pooled = pooled + site_moments(
        training_slices(federation["agents"][SITES[1]], model_dir).vectors
    )
    mean, std = pooled.mean_std()
    rounds = [
        open_round(p, federation["cloud_key"], FED)
        for t, p, _ in federation["recorder"].messages
        if t == f"ftl/{FED}/rounds/current" and p
    ]
    second = next(r for r in rounds if r.round == 2)
    assert "update_kind" not in second.training
    np.testing.assert_allclose(second.training["feature_mean"], mean, rtol=1e-4, atol=1e-5)
    # the std comes from fp32 sums of squares (E[x^2] - mean^2): a dimension whose spread is
    # small beside its mean loses a few digits there, harmless for a preconditioner
    np.testing.assert_allclose(second.training["feature_std"], std, rtol=1e-2, atol=1e-5)


def test_both_agents_train_the_second_round_and_install_its_head(federation):
    for agent in federation["agents"].values():
        status = agent_status(agent.data_dir)
        assert status["model_version"] == federation["newest"] and status["outbox"] == 0
        fed = status["federation"]
        assert fed["updates_made"] == 2 == fed["updates_acknowledged"]
        assert fed["last_training"]["outcome"] == "trained"
        assert agent.alive()
