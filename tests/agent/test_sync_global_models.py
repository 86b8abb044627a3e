"""Global heads arriving at a real ``ftl-agent serve``: refused when they are not the cloud's or
not for this model, installed with a hot swap when they are, kept out by the gate when they
would make local results worse, and remembered across a restart."""

from __future__ import annotations

import contextlib

import numpy as np

from ftlct.agent.inference.embeddings import load_embeddings
from ftlct.protocol.exchange import open_twin_state
from ftlct.protocol.identity import load_identity
from ftlct.protocol.topics import Topics
from tests.agent.federation_peers import (
    AGENT_ENV,
    FED,
    Recorder,
    agent_cli,
    agent_status,
    federation_args,
    send,
)
from tests.agent.federation_support import ScriptedCloud
from tests.agent.synthetic_ct import labels_csv, write_series, write_study_set
from tests.cloud.harness import MqttPeer
from tests.support.dicom_peers import running_agent, wait_for
from tests.support.mosquitto import running_mosquitto

SITE = "site-m"
ENV = {
    **AGENT_ENV,
    "FTLCT_AGENT_TRAINING_AUTO": "false",
    "FTLCT_AGENT_TRAINING_VAL_FRACTION": "0.5",
    "FTLCT_AGENT_TRAINING_GATE_MIN_SAMPLES": "4",
}


def centroid_head(data_dir, backbone_sha256, series) -> dict[str, np.ndarray]:
    """A nearest-centroid linear head fitted on the agent's own embeddings (a good head)."""
    keys, vectors = load_embeddings(data_dir, backbone_sha256)
    label_of = {s.series_uid: s.label for s in series}
    means = []
    for label in ("normal", "abnormal"):
        rows = [i for i, uid in enumerate(keys.series_uids) if label_of.get(uid) == label]
        means.append(vectors[rows].mean(axis=0))
    weight = np.stack(means).astype(np.float32)
    bias = (-0.5 * (weight**2).sum(axis=1)).astype(np.float32)
    return {"dense.0.weight": weight, "dense.0.bias": bias}


def test_refusals_install_gate_restart_and_last_will(tmp_path, model_dir):
    topics = Topics(FED)
    cloud = ScriptedCloud(tmp_path / "cloud-keys", FED)
    impostor = ScriptedCloud(tmp_path / "impostor-keys", FED)
    backbone = model_dir.backbone_sha256
    with contextlib.ExitStack() as stack:
        broker = stack.enter_context(running_mosquitto(tmp_path / "broker"))
        recorder = Recorder(broker.url)
        stack.callback(recorder.close)
        publisher = MqttPeer("scripted-cloud", broker.url).connect()
        stack.callback(publisher.close)
        agent = stack.enter_context(
            running_agent(
                tmp_path / "agent",
                model_dir.path,
                *federation_args(broker.url, SITE, cloud.key),
                env=ENV,
            )
        )
        series = write_study_set(tmp_path / "studies", per_class=2, seed=5)
        send(agent, [p for s in series for p in s.paths])
        wait_for(lambda: len(agent.results()) == 4, timeout=90)
        csv = labels_csv(tmp_path / "labels.csv", series, level="series")
        assert (
            agent_cli("label", "import", str(csv), "--data-dir", str(agent.data_dir)).returncode
            == 0
        )

        def fed():
            return agent_status(agent.data_dir)["federation"]

        # a round announcement that is not the cloud's
        publisher.publish(topics.rounds_current, impostor.round(1, model_dir.version), retain=True)
        wait_for(lambda: fed()["rounds_refused"] == 1, timeout=20)
        assert fed()["last_round"] is None

        good = centroid_head(agent.data_dir, backbone, series)
        refused = [
            (impostor.model("forged-1", good, 1, backbone=backbone), "bad_signature"),
            (cloud.model("other-bb-1", good, 1, backbone="c" * 64), "backbone_mismatch"),
            (
                cloud.model("labels-1", good, 1, labels=["a", "b"], backbone=backbone),
                "labels_mismatch",
            ),
        ]
        for count, (payload, reason) in enumerate(refused, start=1):
            publisher.publish(topics.model("global"), payload, retain=True)
            wait_for(lambda c=count: fed()["models_refused"] == c, timeout=20)
            assert fed()["last_model_event"]["reason"].startswith(reason)
        assert agent_status(agent.data_dir)["model_version"] == model_dir.version

        # the cloud's head for this backbone: hot-swapped, and new results carry its version
        publisher.publish(
            topics.model("global"), cloud.model("good-1", good, 1, backbone=backbone), retain=True
        )
        wait_for(lambda: agent_status(agent.data_dir)["model_version"] == "good-1", timeout=30)
        assert fed()["last_model_event"]["outcome"] == "installed"
        extra = write_series(tmp_path / "after", "abnormal", 3, seed=77)
        send(agent, extra.paths)
        row = wait_for(
            lambda: next((r for r in agent.results() if r["series_uid"] == extra.series_uid), None),
            timeout=60,
        )
        assert row["model_version"] == "good-1" and row["label"] == "abnormal"

        # a head that swaps the classes: the gate keeps it out
        bad = {
            "dense.0.weight": good["dense.0.weight"][::-1].copy(),
            "dense.0.bias": good["dense.0.bias"][::-1].copy(),
        }
        publisher.publish(
            topics.model("global"), cloud.model("bad-2", bad, 2, backbone=backbone), retain=True
        )
        wait_for(lambda: fed()["gate_refusals"] == 1, timeout=30)
        event = fed()["last_model_event"]
        assert event["outcome"] == "gate_refused" and "macro-F1 would drop" in event["reason"]
        assert agent_status(agent.data_dir)["model_version"] == "good-1"

        # a restart serves the installed head again (and does not re-judge the refused one)
        assert agent.terminate() == 0
        agent.restart()
        wait_for(lambda: fed()["connected"], timeout=30)
        assert agent_status(agent.data_dir)["model_version"] == "good-1"
        assert fed()["gate_refusals"] == 1

        # the agent vanishes: the broker publishes its last will, the twin says offline
        site_key = load_identity(agent.data_dir / "keys", SITE).public_b64
        agent.kill()  # SIGKILL: no goodbye from the agent itself

        def offline():
            payloads = recorder.payloads(topics.twin_state(SITE))
            state = (
                open_twin_state(payloads[-1], lambda _: site_key, FED).state if payloads else None
            )
            return state is not None and state.status == "offline"

        wait_for(offline, timeout=20)
