"""``ftl-cloud serve`` on a real mosquitto keeps serving through issue 10's killer messages.

On main each of these ended the process (RecursionError, ValueError,
OverflowError, AttributeError) before or after the signature check, and again
at every restart: the persistent session redelivers a message the cloud never
acknowledged, the broker re-sends a retained one at every subscribe.
"""

from __future__ import annotations

import numpy as np

from ftlct.cloud.state import StateStore
from ftlct.protocol.identity import load_or_create_identity
from tests.cloud import hostile
from tests.cloud.harness import FED, CloudProcess, MqttPeer, ScriptedSite, delta, wait_until


def test_killer_messages_are_counted_and_survive_a_restart(tmp_path, mosquitto_broker, tiny_model):
    state = tmp_path / "state"
    sites = {n: ScriptedSite(n, tmp_path / "keys", mosquitto_broker.url) for n in "abc"}
    store = StateStore.open(state)
    for name, site in sites.items():
        store.sites.enroll(name, site.identity.public_b64)
    store.close()
    for site in sites.values():
        site.connect().subscribe(f"ftl/{FED}/#")
    attacker = MqttPeer("anyone-with-broker-access", mosquitto_broker.url).connect()
    args = ["--broker", mosquitto_broker.url, "--federation", FED, "--model", str(tiny_model.path)]
    cloud = CloudProcess(state, [*args, "--strategy", "fedavg", "--min-sites", "3"]).start()
    a = sites["a"]
    try:
        wait_until(lambda: a.messages(f"ftl/{FED}/rounds/current"), what="round 1")
        signed = hostile.signed_but_impossible(
            a.identity, FED, a.update(1, "v0", delta(1.0, (0, 0)), n=1)
        )
        attacker.publish(f"ftl/{FED}/updates/x", hostile.nested_header())
        attacker.publish(f"ftl/{FED}/updates/a", hostile.long_integer_header())
        attacker.publish(f"ftl/{FED}/twins/x/state", hostile.nested_header(), retain=True)
        attacker.publish(f"ftl/{FED}/updates/b", hostile.nested_header(), retain=True)
        a.send(signed["n_samples 2**63"])
        a.send(signed["codec_params list"])
        first = {"header_limits": 3, "malformed": 2}
        cloud.wait_status(
            lambda s: (
                s.get("updates_rejected") == first
                and s.get("twin_rejected") == {"header_limits": 1}
            ),
            what="every killer message counted",
        )
        assert cloud.process.poll() is None

        cloud.kill()  # junk waiting in the persistent session and retained on twins/
        attacker.publish(f"ftl/{FED}/updates/x", hostile.nested_header())
        cloud.start()
        cloud.wait_status(
            lambda s: (
                s.get("updates_rejected") == {"header_limits": 4, "malformed": 2}
                and s.get("twin_rejected") == {"header_limits": 2}
            ),
            what="the redelivered and the retained junk refused after the restart",
        )
        for name, value, n in (("a", 1.0, 1), ("b", 3.0, 1), ("c", 2.0, 2)):
            sites[name].send(sites[name].update(1, "v0", delta(value, (0, 0)), n=n))
        status = cloud.wait_status(lambda s: s.get("rounds_completed") == 1 and s, what="round 1")
        key = load_or_create_identity(state / "keys", "cloud").public_b64
        model = wait_until(lambda: (m := a.global_model(key)) and m.round == 1 and m, what="model")
        np.testing.assert_allclose(model.weights["dense.0.weight"], np.full((2, 4), 2.0))
        assert status["messages"]["accepted"] == 3 and cloud.process.poll() is None

        # the retained junk on updates/b was cleared: a new subscriber gets nothing there
        late = MqttPeer("late-listener", mosquitto_broker.url).connect()
        late.subscribe(f"ftl/{FED}/updates/#")
        late.subscribe(f"ftl/{FED}/rounds/current")  # retained: its arrival ends the wait
        wait_until(lambda: late.messages(f"ftl/{FED}/rounds/current"), what="retained round")
        assert late.messages(f"ftl/{FED}/updates/b") == []
        late.close()
    finally:
        cloud.stop()
        attacker.close()
        for site in sites.values():
            site.close()
