"""``ftl-cloud serve --initial-weights``: whole-network FedAvg and CFL through a real mosquitto."""

from __future__ import annotations

import numpy as np
import pytest

from ftlct.cloud.state import StateStore
from ftlct.protocol import exchange
from ftlct.protocol.identity import load_or_create_identity
from ftlct.protocol.messages import weights_layout_sha256
from tests.cloud.harness import (
    FED,
    CloudProcess,
    ScriptedSite,
    delta,
    network,
    wait_until,
    write_network_file,
)

PIN = weights_layout_sha256(network())
LABELS = ["normal", "abnormal"]


@pytest.fixture
def fleet(tmp_path, mosquitto_broker):
    """Sites a, b, c enrolled and listening; the cloud's key; an ``--initial-weights`` file."""
    state = tmp_path / "state"
    store = StateStore.open(state)
    sites = {}
    for name in "abc":
        sites[name] = ScriptedSite(name, tmp_path / "keys", mosquitto_broker.url)
        store.sites.enroll(name, sites[name].identity.public_b64)
        sites[name].connect().subscribe(f"ftl/{FED}/#")
    store.close()
    cloud_key = load_or_create_identity(state / "keys", "cloud").public_b64
    initial = write_network_file(tmp_path / "initial.safetensors", network(0.5), version="net-v0")
    yield state, cloud_key, sites, initial
    for site in sites.values():
        site.close()


def _serve(state, broker, *args, config: dict | None = None) -> CloudProcess:
    extra = []
    if config:
        path = state.parent / "cloud.toml"
        path.write_text(
            "".join(
                f"[{table}]\n" + "".join(f"{k} = {v}\n" for k, v in values.items())
                for table, values in config.items()
            )
        )
        extra = ["--config", str(path)]
    args = ["--broker", broker.url, "--federation", FED, "--min-sites", "3", *extra, *args]
    return CloudProcess(state, args).start()


def _network_model(site, cloud_key, cluster="global", round_=None):
    """``site``'s verified whole-network model of ``cluster`` (of ``round_`` if given), once there."""

    def ready():
        model = site.global_model(
            cloud_key, cluster, kind="network", architecture_sha256=PIN, labels=LABELS
        )
        return model if model and (round_ is None or model.round == round_) else None

    return wait_until(ready, what=f"{cluster} model at {site.identity.name}")


def _round(site, cloud_key, number):
    return wait_until(
        lambda: (r := site.round(cloud_key)) and r.round == number and r,
        what=f"round {number} at {site.identity.name}",
    )


def test_whole_network_fedavg_over_a_real_broker_with_hand_checked_numbers(fleet, mosquitto_broker):
    state, cloud_key, sites, initial = fleet
    cloud = _serve(
        state, mosquitto_broker, "--strategy", "fedavg", "--rounds", "2",
        "--initial-weights", str(initial),
    )  # fmt: skip
    try:
        a = sites["a"]
        first = _network_model(a, cloud_key)
        assert (first.version, first.round, first.kind) == ("net-v0", 0, "network")
        # what an agent does with it: no kind given means a head, and this is not one
        payload = a.messages(a.topics.model("global"))[-1]
        with pytest.raises(exchange.ProtocolError) as refused:
            exchange.open_global_model(payload, cloud_key, FED, labels=LABELS)
        assert refused.value.reason == "kind_mismatch"

        assert _round(a, cloud_key, 1).base_versions == {"global": "net-v0"}
        sites["a"].send(sites["a"].update(1, "net-v0", network(1.0), n=1))
        sites["b"].send(sites["b"].update(1, "net-v0", network(-1.0), n=3, codec="fp16"))
        sites["c"].send(sites["c"].update(1, "net-v0", network(2.0), n=4, codec="int8"))
        model = _network_model(a, cloud_key, round_=1)
        # 0.5 + (1*1 - 3*1 + 4*2) / 8 = 1.25 on every tensor (fp16, int8 exact for these values)
        for name, value in model.weights.items():
            np.testing.assert_allclose(value, np.full(value.shape, 1.25), err_msg=name)
        assert model.base_version == "net-v0"

        base = _round(a, cloud_key, 2).base_versions["global"]
        for name in "abc":
            sites[name].send(sites[name].update(2, base, network(-0.25), n=2))
        assert cloud.process.wait(timeout=60) == 0, cloud.log()
        final = _network_model(a, cloud_key, round_=2)
        np.testing.assert_allclose(final.weights["classifier.bias"], [1.0, 1.0])
        status = cloud.status()
        assert status["model_kind"] == "network" and status["architecture_sha256"] == PIN
        assert status["rounds_completed"] == 2 and status["updates_rejected"] == {}
    finally:
        cloud.stop()


def test_cfl_over_mqtt_splits_and_each_site_receives_its_clusters_model(fleet, mosquitto_broker):
    state, cloud_key, sites, initial = fleet
    cloud = _serve(
        state, mosquitto_broker, "--strategy", "cfl", "--rounds", "2",
        "--initial-weights", str(initial),
        config={"strategy_params": {"eps1": 1.0, "eps2": 0.5}},
    )  # fmt: skip
    try:
        _round(sites["a"], cloud_key, 1)
        # a and b pull one way, c (twice the samples) the other: the mean update is 0 (< eps1)
        # while each is long (> eps2), so CFL splits {a, b} from {c}
        sites["a"].send(sites["a"].update(1, "net-v0", network(1.0), n=1))
        sites["b"].send(sites["b"].update(1, "net-v0", network(1.0), n=1))
        sites["c"].send(sites["c"].update(1, "net-v0", network(-1.0), n=2))
        announcement = _round(sites["c"], cloud_key, 2)
        assert sorted(announcement.base_versions) == ["global.0", "global.1"]
        assert announcement.default_cluster == "global.0"  # the bigger part
        assert announcement.assignments == {"c": "global.1"}
        expected = {"a": 1.5, "b": 1.5, "c": -0.5}  # 0.5 +- 1
        for name, site in sites.items():
            cluster = _round(site, cloud_key, 2).cluster_for(name)
            model = _network_model(site, cloud_key, cluster, round_=1)
            assert model.version == announcement.base_versions[cluster]
            np.testing.assert_allclose(model.weights["features.0.weight"], expected[name])
            # the parent cluster's retained model is cleared for everyone
            wait_until(lambda s=site: s.messages(s.topics.model("global"))[-1] == b"")

        for name, value in (("a", 1.0), ("b", 3.0), ("c", -1.0)):
            cluster = announcement.cluster_for(name)
            base = announcement.base_versions[cluster]
            sites[name].send(sites[name].update(2, base, network(value), n=1, cluster=cluster))
        assert cloud.process.wait(timeout=60) == 0, cloud.log()
        a_model = _network_model(sites["a"], cloud_key, "global.0", round_=2)
        c_model = _network_model(sites["c"], cloud_key, "global.1", round_=2)
        np.testing.assert_allclose(a_model.weights["classifier.weight"], np.full((2, 2), 3.5))
        np.testing.assert_allclose(c_model.weights["classifier.weight"], np.full((2, 2), -1.5))
        status = cloud.status()
        assert status["clusters"] == {"global.0": ["a", "b"], "global.1": ["c"]}
        assert [s["children"] for s in status["splits"]] == [
            {"global.0": ["a", "b"], "global.1": ["c"]}
        ]
    finally:
        cloud.stop()


def test_an_ftl_federation_over_mqtt_refuses_whole_network_updates(
    fleet, mosquitto_broker, tiny_model
):
    state, cloud_key, sites, _ = fleet
    cloud = _serve(
        state, mosquitto_broker, "--strategy", "ftl", "--rounds", "1",
        "--model", str(tiny_model.path),
    )  # fmt: skip
    try:
        _round(sites["a"], cloud_key, 1)
        sites["a"].send(sites["a"].update(1, "v0", network(1.0), n=1))
        cloud.wait_status(
            lambda s: s.get("updates_rejected") == {"shape_mismatch": 1}, what="refusal"
        )
        for name in "abc":  # the round still completes with heads
            sites[name].send(sites[name].update(1, "v0", delta(1.0, (0, 0)), n=1))
        assert cloud.process.wait(timeout=60) == 0, cloud.log()
        head = sites["a"].global_model(cloud_key, backbone=tiny_model.backbone_sha256)
        assert head.kind == "head" and head.round == 1
        np.testing.assert_allclose(head.weights["dense.0.weight"], np.ones((2, 4)))
    finally:
        cloud.stop()
