"""Fuzz the cloud: >= 10,000 mutated envelopes, zero deaths, every case answered, a finite head.

In process, the round loop judges the cases exactly as ``ftl-cloud serve``
does (inbox batches); a real ``ftl-cloud serve`` behind a real mosquitto then
takes a slice of cases and must count every one of them as the in-process run
did. Figures: ``docs/reliability.md`` (``FTLCT_FUZZ_REPORT=FILE`` writes the
tables of a run).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import pytest

from ftlct.bench.light_fleet import paced_publish, stored_by
from ftlct.cloud.state import StateStore
from ftlct.protocol.identity import load_or_create_identity
from ftlct.protocol.mqtt_connection import MqttSettings, new_client, parse_broker_url
from tests.cloud.envelope_fuzz import EnvelopeFuzzer, new_identity
from tests.cloud.fuzz_runs import (
    FUZZ_SITES,
    LIMITS,
    fuzz_cases,
    fuzz_sites,
    run_in_process,
)
from tests.cloud.harness import FED, CloudProcess, ScriptedSite, wait_until

pytestmark = pytest.mark.reliability

IN_PROCESS_CASES = 10_000
REAL_PROCESS_CASES = 3_000


def _report(title: str, text: str) -> None:
    target = os.environ.get("FTLCT_FUZZ_REPORT")
    if target:
        with open(target, "a") as handle:
            handle.write(f"\n### {title}\n\n{text}\n")


def _figures(run) -> str:
    return (
        f"{run.tally.markdown()}\n\nReceipts sent: {len(run.receipts)} "
        "(every accepted or duplicate case, and every refusal of an attributable update)."
    )


def _check_run(run, count: int) -> None:
    outcomes = run.tally.outcomes()
    assert run.tally.cases == count and sum(run.status["messages"].values()) == count
    assert "rejected:internal" not in outcomes, run.tally.markdown()  # no case hit a bug
    assert outcomes["accepted"] <= FUZZ_SITES  # one update per site and round, at most
    assert len(run.receipts) == run.tally.receipts_expected()
    assert all(np.isfinite(value).all() for value in run.head.values())


def test_ten_thousand_mutated_envelopes_in_process(tmp_path, tiny_model):
    sites = fuzz_sites()
    cases = fuzz_cases(sites, IN_PROCESS_CASES, seed=0)
    run = run_in_process(tmp_path, tiny_model, sites, cases)
    _check_run(run, IN_PROCESS_CASES)
    _report(f"In process: {IN_PROCESS_CASES} cases, seed 0", _figures(run))


@pytest.mark.parametrize(
    "count",
    [
        REAL_PROCESS_CASES,
        # the full size through the real process: `make bench` (pytest -m perf)
        pytest.param(IN_PROCESS_CASES, marks=pytest.mark.perf, id="full-size"),
    ],
)
def test_a_real_serve_behind_mosquitto_answers_every_case_as_the_round_loop_does(
    tmp_path, mosquitto_broker, tiny_model, count
):
    sites = fuzz_sites()
    cases = fuzz_cases(sites, count, seed=1)
    expected = run_in_process(tmp_path / "in-process", tiny_model, sites, cases)
    _check_run(expected, count)

    state = tmp_path / "state"
    store = StateStore.open(state)
    with store.transaction():
        for site in sites:
            store.sites.enroll(site.name, site.public_b64)
    store.close()
    env = {f"FTLCT_CLOUD_LIMITS_{k.upper()}": str(v) for k, v in LIMITS.items()}
    args = ["--broker", mosquitto_broker.url, "--federation", FED, "--model", str(tiny_model.path)]
    args += ["--strategy", "fedavg", "--min-sites", str(FUZZ_SITES + 1), "--round-timeout", "3"]
    cloud = CloudProcess(state, args, env).start()
    watcher = ScriptedSite("watcher", tmp_path / "keys", mosquitto_broker.url).connect()
    sender = _Sender(mosquitto_broker.url)
    try:
        watcher.subscribe(f"ftl/{FED}/rounds/current")
        watcher.subscribe(f"ftl/{FED}/model/+")
        watcher.subscribe(f"ftl/{FED}/receipts/+")
        wait_until(lambda: watcher.messages(f"ftl/{FED}/rounds/current"), what="round 1")
        sender.publish_all(cases, stored_by(state))
        status = cloud.wait_status(
            lambda s: sum(s.get("messages", {}).values()) >= len(cases) and s,
            timeout=60 + count / 50,
            what="every case judged",
        )
        assert cloud.process.poll() is None  # zero deaths
        for key in ("messages", "updates_rejected", "twin_rejected", "updates_duplicate"):
            assert status[key] == expected.status[key], key
        receipts = wait_until(
            lambda: len(r := _all_receipts(watcher)) >= len(expected.receipts) and r,
            what="every receipt",
        )
        assert len(receipts) == len(expected.receipts)

        closer = new_identity("closer")
        store = StateStore.open_existing(state)
        store.sites.enroll(closer.name, closer.public_b64)  # as `ftl-cloud enroll` would
        store.close()
        sender.publish_one(
            watcher.topics.updates("closer"), EnvelopeFuzzer(FED, [closer], seed=1).update(closer)
        )
        cloud.wait_status(lambda s: s.get("rounds_completed") == 1, what="the round closed")
        key = load_or_create_identity(state / "keys", "cloud").public_b64
        head = wait_until(
            lambda: (m := watcher.global_model(key)) and m.round == 1 and m, what="head r1"
        )
        assert all(np.isfinite(value).all() for value in head.weights.values())
        _report(f"Real serve + mosquitto: {len(cases)} cases, seed 1", _figures(expected))
    finally:
        cloud.stop()
        sender.close()
        watcher.close()


def _all_receipts(watcher) -> list[bytes]:
    with watcher._lock:
        return [p for t, ps in watcher.received.items() if "/receipts/" in t for p in ps]


class _Sender:
    """One connection that publishes each case once, in order, QoS 1, with its retain flag."""

    def __init__(self, url: str):
        broker = parse_broker_url(url)
        self.client = new_client("fuzz-sender", broker, MqttSettings())
        connected = threading.Event()
        self.client.on_connect = lambda *args: connected.set()
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        if not connected.wait(10):
            raise AssertionError("no CONNACK")

    def publish_all(self, cases, stored) -> None:
        messages = [(c.topic, c.payload, c.retained) for c in cases]
        paced_publish(self.client, messages, stored, window=500, timeout=60 + len(cases) / 50)

    def publish_one(self, topic: str, payload: bytes) -> None:
        self.client.publish(topic, payload, qos=1).wait_for_publish(10)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_the_fuzz_covers_every_family_and_is_reproducible():
    sites = fuzz_sites(2)
    first = [c.family for c in EnvelopeFuzzer(FED, sites, seed=5).cases(2000)]
    again = [c.family for c in EnvelopeFuzzer(FED, sites, seed=5).cases(2000)]
    assert first == again
    from tests.cloud.envelope_fuzz import FAMILIES

    assert set(first) == set(FAMILIES)
    assert Path(__file__).with_name("envelope_fuzz.py").is_file()
