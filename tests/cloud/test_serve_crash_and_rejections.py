"""The real cloud process under SIGKILL, and bad updates that must not hurt it."""

from __future__ import annotations

import os

import numpy as np
import pytest

from ftlct.cloud.state import StateStore
from ftlct.protocol import exchange
from ftlct.protocol.envelope import seal
from ftlct.protocol.identity import load_or_create_identity
from ftlct.protocol.messages import tensors_to_body
from tests.cloud.harness import FED, CloudProcess, ScriptedSite, delta, wait_until


@pytest.fixture
def setup(tmp_path, mosquitto_broker, tiny_model):
    state = tmp_path / "state"
    sites = {n: ScriptedSite(n, tmp_path / "keys", mosquitto_broker.url) for n in "abcd"}
    store = StateStore.open(state)
    for name in "abc":
        store.sites.enroll(name, sites[name].identity.public_b64)
    store.close()
    for site in sites.values():
        site.connect().subscribe(f"ftl/{FED}/#")
    args = ["--broker", mosquitto_broker.url, "--federation", FED, "--model", str(tiny_model.path)]
    args += ["--strategy", "fedavg", "--min-sites", "3", "--round-timeout", "120"]
    yield state, args, sites
    for site in sites.values():
        site.close()


def _cloud_key(state) -> str:
    return load_or_create_identity(state / "keys", "cloud").public_b64


def test_sigkill_mid_round_then_restart_completes_the_round_exactly_once(setup, tiny_model):
    state, args, sites = setup
    cloud = CloudProcess(state, args).start()
    try:
        wait_until(lambda: sites["a"].messages(f"ftl/{FED}/rounds/current"), what="round 1")
        sent_a = sites["a"].update(1, "v0", delta(1.0, (1, -1)), n=1)
        sites["a"].send(sent_a)
        sites["b"].send(sites["b"].update(1, "v0", delta(2.0, (0, 0)), n=1))
        cloud.wait_status(
            lambda s: s.get("updates_this_round") == ["a", "b"], what="a and b stored"
        )
        cloud.kill()

        # while the cloud is dead, a's agent resends its update (same bytes: same
        # update_id) and c sends; both wait at the broker (the cloud's persistent session)
        sites["a"].send(sent_a)
        sites["c"].send(sites["c"].update(1, "v0", delta(4.0, (-1, 1)), n=2))

        cloud.start()
        status = cloud.wait_status(
            lambda s: s.get("rounds_completed") == 1 and s, what="round 1 done"
        )
        # >= 1: besides a's resend, the broker may redeliver b if the kill beat b's PUBACK
        diagnosis = f"{status}\n--- cloud log ---\n{cloud.log()[-4000:]}"
        assert status["round"] == 2 and status["updates_duplicate"] >= 1, diagnosis
        assert status["updates_rejected"] == {}, diagnosis
        cloud_key = _cloud_key(state)
        model = wait_until(
            lambda: (m := sites["a"].global_model(cloud_key)) and m.round == 1 and m,
            what="model r1",
        )
        np.testing.assert_allclose(model.weights["dense.0.weight"], np.full((2, 4), 2.75))
        np.testing.assert_allclose(model.weights["dense.0.bias"], [-0.25, 0.25])
        store = StateStore.open_existing(state)
        assert store.models.count_of_round(1) == 1
        assert store.rounds.last().round == 2 and store.rounds.completed() == 1
        store.close()
        assert cloud.log().count("round 1 aggregated") == 1, cloud.log()[-4000:]
    finally:
        cloud.stop()


def test_bad_updates_are_counted_by_reason_and_the_round_still_completes(setup, tmp_path):
    state, args, sites = setup
    env = {
        "FTLCT_CLOUD_LIMITS_MAX_UPDATE_BYTES": "100000",
        "FTLCT_CLOUD_LIMITS_MAX_DELTA_NORM": "20",
    }
    cloud = CloudProcess(state, args, env).start()
    a, b, d = sites["a"], sites["b"], sites["d"]
    try:
        wait_until(lambda: a.messages(f"ftl/{FED}/rounds/current"), what="round 1")
        impostor = load_or_create_identity(tmp_path / "impostor", "a")
        forged = exchange.build_update(
            impostor,
            FED,
            round=1,
            base_version="v0",
            cluster="global",
            n_samples=1,
            delta=delta(1.0, (0, 0)),
        )
        payload = exchange.peek(a.update(1, "v0", delta(1.0, (0, 0)), n=1)).payload
        nan_body = tensors_to_body(
            {
                "dense.0.weight": np.full((2, 4), np.nan, np.float32),
                "dense.0.bias": np.zeros(2, np.float32),
            }
        )
        bad = {
            "bad_signature": (a, forged),
            "unknown_site": (d, d.update(1, "v0", delta(1.0, (0, 0)), n=1)),
            "wrong_round": (a, a.update(3, "v0", delta(1.0, (0, 0)), n=1)),
            "wrong_base_version": (a, a.update(1, "v-stale", delta(1.0, (0, 0)), n=1)),
            "shape_mismatch": (
                a,
                a.update(
                    1,
                    "v0",
                    {
                        "dense.0.weight": np.zeros((3, 4), np.float32),
                        "dense.0.bias": np.zeros(3, np.float32),
                    },
                    n=1,
                ),
            ),
            "non_finite": (a, seal("site_update", FED, payload, a.identity, nan_body)),
            "norm_bound": (a, a.update(1, "v0", delta(8.0, (0, 0)), n=1)),
            "oversize": (a, os.urandom(100_001)),
        }
        for site, data in bad.values():
            site.send(data)
        good_a = a.update(1, "v0", delta(1.0, (0, 0)), n=1)
        a.send(good_a)
        b.send(b.update(1, "v0", delta(3.0, (0, 0)), n=1))
        expected = {reason: 1 for reason in bad}
        cloud.wait_status(
            lambda s: s.get("updates_rejected") == expected, what="every rejection counted"
        )
        sites["c"].send(sites["c"].update(1, "v0", delta(2.0, (0, 0)), n=2))
        cloud.wait_status(lambda s: s.get("rounds_completed") == 1, what="round 1 done")
        a.send(good_a)  # round 1's update again, now that round 2 is open: it already counted
        status = cloud.wait_status(
            lambda s: s.get("updates_duplicate") == 1 and s, what="late resend counted"
        )
        assert status["updates_rejected"] == expected
        assert cloud.process.poll() is None
        model = wait_until(
            lambda: (m := a.global_model(_cloud_key(state))) and m.round == 1 and m, what="model"
        )
        np.testing.assert_allclose(
            model.weights["dense.0.weight"], np.full((2, 4), 2.0)
        )  # (1+3+2*2)/4
        assert status["round"] == 2
    finally:
        cloud.stop()
