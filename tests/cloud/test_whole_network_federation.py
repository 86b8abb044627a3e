"""Whole-network federations (``--initial-weights``): what starts them, what they refuse.

The round machine runs here without a broker (the serve-level runs are in
``test_whole_network_serve.py``).
"""

from __future__ import annotations

import numpy as np
import pytest

from ftlct.cloud.initial_model import InitialModelError, network_from_file
from ftlct.cloud.round_coordinator import CloudStateError, RoundCoordinator
from ftlct.cloud.settings import CloudSettings
from ftlct.cloud.state import StateStore
from ftlct.cloud.status_report import status_report
from ftlct.cloud.strategies import make_strategy
from ftlct.protocol import exchange
from ftlct.protocol.identity import load_or_create_identity
from ftlct.protocol.messages import weights_layout_sha256
from ftlct.protocol.topics import Topics
from tests.cloud.harness import FED, delta, network, write_network_file

TOPICS = Topics(FED)


class Cloud:
    """A coordinator over a state dir with enrolled sites a, b, c; messages captured."""

    def __init__(self, tmp_path, strategy: str, **params):
        self.settings = CloudSettings(
            federation=FED,
            strategy=strategy,
            strategy_params=params,
            min_sites=3,
            state_dir=str(tmp_path / "state"),
        )
        self.identity = load_or_create_identity(tmp_path / "cloudkeys", "cloud")
        self.sites = {n: load_or_create_identity(tmp_path / "keys", n) for n in "abc"}
        self.store = StateStore.open(self.settings.state_dir)
        for name, identity in self.sites.items():
            self.store.sites.enroll(name, identity.public_b64)
        self.published: list[tuple[str, bytes]] = []

    def start(self, initial) -> RoundCoordinator:
        coordinator = RoundCoordinator(
            self.settings,
            self.store,
            make_strategy(self.settings.strategy, **self.settings.strategy_params),
            self.identity,
            lambda topic, payload, retain: self.published.append((topic, payload)),
        )
        coordinator.initialise(initial)
        coordinator.publish_all()
        return coordinator

    def send(self, coordinator, site: str, weights, base: str, n: int = 1) -> str:
        payload = exchange.build_update(
            self.sites[site],
            FED,
            round=1,
            base_version=base,
            cluster="global",
            n_samples=n,
            delta=weights,
        )
        return coordinator.on_message(TOPICS.updates(site), payload)

    def model(self, **pins):
        payload = [p for t, p in self.published if t == TOPICS.model("global")][-1]
        return exchange.open_global_model(payload, self.identity.public_b64, FED, **pins)


@pytest.fixture
def network_file(tmp_path):
    return write_network_file(tmp_path / "initial.safetensors", network(0.5), version="net-v0")


def test_a_network_file_starts_a_network_federation_pinned_by_its_layout(tmp_path, network_file):
    cloud = Cloud(tmp_path, "fedavg")
    coordinator = cloud.start(network_from_file(network_file))
    pin = weights_layout_sha256(network())
    first = cloud.model(kind="network", architecture_sha256=pin, labels=["normal", "abnormal"])
    assert (first.version, first.round, first.kind) == ("net-v0", 0, "network")
    np.testing.assert_array_equal(first.weights["features.0.weight"], np.full((2, 1, 3, 3), 0.5))
    # a head update has other tensors than the federation's network
    assert cloud.send(coordinator, "a", delta(1.0, (0, 0)), "net-v0") == "rejected:shape_mismatch"
    assert cloud.send(coordinator, "a", network(1.0), "net-v0", n=1) == "accepted"
    assert cloud.send(coordinator, "b", network(-1.0), "net-v0", n=3) == "accepted"
    assert cloud.send(coordinator, "c", network(2.0), "net-v0", n=4) == "accepted"
    # 0.5 + (1*1 - 3*1 + 4*2) / 8 = 1.25 on every tensor
    after = cloud.model(kind="network", architecture_sha256=pin)
    assert after.round == 1 and after.base_version == "net-v0"
    for name, value in after.weights.items():
        np.testing.assert_allclose(value, np.full(value.shape, 1.25), err_msg=name)
    report = status_report(cloud.store)
    assert report["model_kind"] == "network" and report["architecture_sha256"] == pin
    assert report["backbone_sha256"] is None and report["updates_rejected"] == {"shape_mismatch": 1}


def test_ftl_cannot_start_a_whole_network_federation(tmp_path, network_file):
    cloud = Cloud(tmp_path, "ftl")
    with pytest.raises(CloudStateError, match=r"--strategy ftl cannot federate .*dense"):
        cloud.start(network_from_file(network_file))
    assert cloud.store.models.federation_state() is None  # nothing half-created
    # nor through a wrapper: the strategy itself is asked, not its name
    wrapped = Cloud(tmp_path / "wrapped", "norm_clipping", max_norm=1.0, inner="ftl")
    with pytest.raises(CloudStateError, match="cannot federate"):
        wrapped.start(network_from_file(network_file))


def test_an_ftl_federation_refuses_whole_network_updates(tmp_path, tiny_model):
    cloud = Cloud(tmp_path, "ftl")
    coordinator = cloud.start(tiny_model)
    assert cloud.send(coordinator, "a", network(1.0), "v0") == "rejected:shape_mismatch"
    assert status_report(cloud.store)["updates_rejected"] == {"shape_mismatch": 1}
    assert cloud.model(backbone_sha256=tiny_model.backbone_sha256).kind == "head"


def test_a_restart_keeps_what_the_federation_federates(tmp_path, network_file, tiny_model):
    cloud = Cloud(tmp_path, "fedavg")
    cloud.start(network_from_file(network_file))
    with pytest.raises(CloudStateError, match=r"federates a network, .* is a head"):
        cloud.start(tiny_model)
    wider = {**network(), "classifier.weight": np.zeros((2, 3), np.float32)}
    other = write_network_file(tmp_path / "other.safetensors", wider)
    with pytest.raises(CloudStateError, match="another tensor layout"):
        cloud.start(network_from_file(other))
    cloud.settings.strategy = "ftl"
    with pytest.raises(CloudStateError, match="--strategy ftl cannot federate the federation in"):
        cloud.start(None)
    cloud.settings.strategy = "cfl"  # another strategy over the same network is fine
    cloud.start(network_from_file(network_file))
    cloud.start(None)
    heads = Cloud(tmp_path / "heads", "fedavg")
    heads.start(tiny_model)
    with pytest.raises(CloudStateError, match=r"federates a head, .* is a network"):
        heads.start(network_from_file(network_file))


def _write_raw(path, data: bytes):
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    ("make", "needle"),
    [
        (lambda d: d / "missing.safetensors", "no such file"),
        (lambda d: _write_raw(d / "junk.safetensors", b"not safetensors"), "not a safetensors"),
        (lambda d: write_network_file(d / "x.safetensors", network(), labels=["one"]), "labels"),
        (
            lambda d: write_network_file(d / "x.safetensors", network(), labels=["a", "a"]),
            "labels",
        ),
        (
            lambda d: write_network_file(
                d / "x.safetensors", {**network(), "steps": np.zeros(1, np.int64)}
            ),
            "steps is int64",
        ),
        (
            lambda d: write_network_file(
                d / "x.safetensors", {**network(), "bad": np.full(2, np.nan, np.float32)}
            ),
            "non-finite",
        ),
        (lambda d: write_network_file(d / "x.safetensors", {}), "no tensors"),
    ],
)
def test_a_bad_initial_weights_file_is_refused_with_the_reason(tmp_path, make, needle):
    with pytest.raises(InitialModelError, match=needle):
        network_from_file(make(tmp_path))


def test_labels_without_metadata_are_refused(tmp_path):
    from safetensors.numpy import save_file

    path = tmp_path / "bare.safetensors"
    save_file(network(), str(path))
    with pytest.raises(InitialModelError, match="metadata 'labels'"):
        network_from_file(path)
