"""A closed-form federation end to end: real mosquitto, ``ftl-cloud serve --strategy closed_form``
and two ``ftl-agent serve``. Each site sends the statistics of its labelled embeddings once; the
cloud's head is the head solved from the pooled statistics, and both agents install it."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest

from ftlct.export.closed_form_head import (
    HeadStatistics,
    site_statistics,
    solve_head,
    statistics_bytes,
)
from ftlct.export.model_dir import ModelDir
from ftlct.protocol.exchange import open_global_model, peek
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
MAX_EMBEDDING_NORM = 200.0  # the closed_form strategy's default bound


@pytest.fixture(scope="module")
def federation(tmp_path_factory, model_dir):
    root = tmp_path_factory.mktemp("closed-form")
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
            # site-b holds more series than site-a: the sum must weigh them as pooled data would
            studies[site] = write_study_set(
                root / site / "studies", per_class=3 + index, seed=index + 7
            )
        cloud = CloudProcess(
            state,
            [
                "--broker", broker.url, "--federation", FED, "--model", str(model_dir.path),
                "--strategy", "closed_form", "--min-sites", "2", "--round-timeout", "120",
                "--rounds", "1",
            ],
            # no share bound: with two sites the default 0.5 would weigh site-b as site-a
            # (cloud/site_weights.py; the scaled statistics are unit-tested in tests/cloud), and
            # this test checks the head against the statistics pooled as they are
            env={"FTLCT_CLOUD_LIMITS_MAX_SITE_SHARE": "1.0"},
        ).start()  # fmt: skip
        stack.callback(cloud.stop)
        send_and_label(root, agents, studies)
        assert cloud.process.wait(timeout=240) == 0, cloud.log()[-3000:]
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


def test_one_round_gives_the_head_solved_from_the_pooled_statistics(federation):
    cloud, newest = federation["cloud"], federation["newest"]
    assert cloud["rounds_completed"] == 1 and cloud["updates_rejected"] == {}
    assert newest.startswith("r1-global-")
    model_dir = federation["model_dir"]
    slices = [training_slices(federation["agents"][s], model_dir) for s in SITES]
    exact = [site_statistics(t.vectors, t.labels, 2, clip_norm=MAX_EMBEDDING_NORM) for t in slices]
    published = [
        p for t, p, _ in federation["recorder"].messages if t == f"ftl/{FED}/model/global" and p
    ]
    head = open_global_model(published[-1], federation["cloud_key"], FED)
    assert head.version == newest
    # the wire carries float32: summed as sent, the statistics give the cloud's head exactly
    sent = [HeadStatistics.from_arrays(stats.to_arrays()) for stats in exact]
    as_sent = solve_head(sent[0] + sent[1])  # the cloud's defaults: discriminant, shrinkage 0.5
    for name, value in as_sent.items():
        np.testing.assert_allclose(
            head.weights[name], value, rtol=1e-4, atol=1e-6 * np.abs(value).max()
        )
    # against float64 statistics pooled in one place: the float32 rounding moves a few weights
    # (the within-class covariance is the small difference of large sums) but not the logits'
    # verdicts on any slice
    central = solve_head(exact[0] + exact[1])
    vectors = np.concatenate([t.vectors for t in slices])
    got = vectors @ head.weights["dense.0.weight"].T + head.weights["dense.0.bias"]
    want = vectors @ central["dense.0.weight"].T + central["dense.0.bias"]
    assert np.array_equal(got.argmax(axis=1), want.argmax(axis=1))
    margin = np.abs(want[:, 1] - want[:, 0])
    assert np.all(np.abs((got - want)[:, 1] - (got - want)[:, 0]) < 0.05 * margin.mean())


def test_both_agents_install_it_through_the_gate_and_serve_it(federation):
    for agent in federation["agents"].values():
        status = agent_status(agent.data_dir)
        assert status["model_version"] == federation["newest"] and status["outbox"] == 0
        fed = status["federation"]
        assert fed["updates_made"] == 1 == fed["updates_acknowledged"]
        assert fed["last_training"]["outcome"] == "trained"
        assert fed["last_model_event"]["outcome"] == "installed", fed["last_model_event"]
        installed = ModelDir.load(agent.data_dir / "models" / federation["newest"])
        published = [
            p for t, p, _ in federation["recorder"].messages if t == f"ftl/{FED}/model/global" and p
        ]
        head = open_global_model(published[-1], federation["cloud_key"], FED)
        for name, value in installed.head_weights().items():
            np.testing.assert_array_equal(value, head.weights[name])
        assert agent.alive()


def test_each_update_is_the_statistics_and_costs_what_the_readme_says(federation):
    updates = [
        (t, p) for t, p, _ in federation["recorder"].messages if t.startswith(f"ftl/{FED}/updates/")
    ]
    assert sorted(t.rsplit("/", 1)[1] for t, _ in updates) == sorted(SITES)
    raw = statistics_bytes(1280, 2)  # 1280 x 1281 / 2 + 2 x 1280 + 2 float32 numbers
    for _, payload in updates:
        envelope = peek(payload)
        assert envelope.payload["kind"] == "statistics" and envelope.payload["codec"] == "fp32"
        assert raw < len(payload) < raw * 1.01  # the signed envelope adds well under 1%
