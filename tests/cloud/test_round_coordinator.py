"""The round state machine without a broker: a fake clock, published messages captured."""

from __future__ import annotations

import sqlite3

import numpy as np
import pytest

from ftlct.cloud.round_coordinator import CloudStateError, RoundCoordinator
from ftlct.cloud.settings import CloudSettings, LimitsSettings
from ftlct.cloud.state import StateStore
from ftlct.cloud.status_report import status_report
from ftlct.cloud.strategies import make_strategy
from ftlct.protocol import exchange
from ftlct.protocol.envelope import seal
from ftlct.protocol.identity import load_or_create_identity
from ftlct.protocol.messages import tensors_to_body
from ftlct.protocol.topics import Topics
from tests.cloud.harness import FED, delta, make_tiny_model

TOPICS = Topics(FED)


class Rig:
    """A coordinator over a state dir, with enrolled sites a, b, c and a hand-driven clock."""

    def __init__(self, tmp_path, strategy="fedavg", **overrides):
        self.tmp_path = tmp_path
        self.now = 1000.0
        self.published: list[tuple[str, bytes, bool]] = []
        self.settings = CloudSettings(
            federation=FED,
            strategy=strategy,
            min_sites=overrides.pop("min_sites", 3),
            round_timeout=100.0,
            state_dir=str(tmp_path / "state"),
            limits=LimitsSettings(max_update_bytes=200_000, max_delta_norm=20.0),
            **overrides,
        )
        self.model = make_tiny_model(tmp_path / "model")
        self.cloud = load_or_create_identity(tmp_path / "cloudkeys", "cloud")
        self.sites = {
            n: load_or_create_identity(tmp_path / "keys", n) for n in ("a", "b", "c", "d")
        }
        self.store = StateStore.open(self.settings.state_dir)
        for name in ("a", "b", "c"):
            self.store.sites.enroll(name, self.sites[name].public_b64)
        self.coordinator = self.restart(self.model)

    def restart(self, model=None) -> RoundCoordinator:
        coordinator = RoundCoordinator(
            self.settings,
            self.store,
            make_strategy(self.settings.strategy, **self.settings.strategy_params),
            self.cloud,
            lambda topic, payload, retain: self.published.append((topic, payload, retain)),
            clock=lambda: self.now,
        )
        coordinator.initialise(model)
        self.coordinator = coordinator
        return coordinator

    def update(self, site, d, n=1, round_=1, base="v0", **kwargs) -> bytes:
        return exchange.build_update(
            self.sites[site],
            FED,
            round=round_,
            base_version=base,
            cluster="global",
            n_samples=n,
            delta=d,
            **kwargs,
        )

    def send(self, site, payload) -> str:
        return self.coordinator.on_message(TOPICS.updates(site), payload)

    def last_model(self, cluster="global"):
        payloads = [p for t, p, _ in self.published if t == TOPICS.model(cluster) and p]
        return exchange.open_global_model(payloads[-1], self.cloud.public_b64, FED)

    def last_round(self):
        payloads = [p for t, p, _ in self.published if t == TOPICS.rounds_current]
        return exchange.open_round(payloads[-1], self.cloud.public_b64, FED)

    def status(self):
        return status_report(self.store)


def test_three_sites_aggregate_to_the_hand_computed_head(tmp_path):
    rig = Rig(tmp_path)
    rig.coordinator.publish_all()
    assert rig.last_model().version == "v0" and rig.last_round().round == 1
    assert rig.send("a", rig.update("a", delta(1.0, (1, -1)), n=1)) == "accepted"
    assert rig.send("b", rig.update("b", delta(2.0, (0, 0)), n=1)) == "accepted"
    assert rig.status()["rounds_completed"] == 0
    assert rig.send("c", rig.update("c", delta(4.0, (-1, 1)), n=2)) == "accepted"
    # (1*1 + 1*2 + 2*4) / 4 = 2.75; bias ((1+0-2)/4, (-1+0+2)/4) = (-0.25, 0.25)
    model = rig.last_model()
    np.testing.assert_allclose(model.weights["dense.0.weight"], np.full((2, 4), 2.75))
    np.testing.assert_allclose(model.weights["dense.0.bias"], [-0.25, 0.25])
    assert (
        model.round == 1 and model.base_version == "v0" and model.version.startswith("r1-global-")
    )
    assert model.backbone_sha256 == rig.model.backbone_sha256 and model.labels == [
        "normal",
        "abnormal",
    ]
    announcement = rig.last_round()
    assert announcement.round == 2 and announcement.base_versions == {"global": model.version}
    status = rig.status()
    assert status["round"] == 2 and status["rounds_completed"] == 1
    assert status["global_versions"] == {"global": model.version}
    # models and rounds are retained, receipts (one per accepted update) are not
    assert all(retain == ("/receipts/" not in topic) for topic, _, retain in rig.published)
    assert [r.outcome for site in "abc" for r in _receipts(rig, site)] == ["accepted"] * 3


def _nan_update(rig):
    payload = exchange.peek(rig.update("a", delta(1.0, (0, 0)))).payload
    body = tensors_to_body(
        {
            "dense.0.weight": np.full((2, 4), np.nan, np.float32),
            "dense.0.bias": np.zeros(2, np.float32),
        }
    )
    return seal("site_update", FED, payload, rig.sites["a"], body)


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda r: r.update("d", delta(1.0, (0, 0))), "unknown_site"),
        (
            lambda r: exchange.build_update(
                r.sites["b"],
                FED,
                round=1,
                base_version="v0",
                cluster="global",
                n_samples=1,
                delta=delta(1.0, (0, 0)),
            ),
            "wrong_sender",
        ),
        (lambda r: r.update("a", delta(1.0, (0, 0)), round_=7), "wrong_round"),
        (lambda r: r.update("a", delta(1.0, (0, 0)), base="v-old"), "wrong_base_version"),
        (
            lambda r: r.update(
                "a",
                {
                    "dense.0.weight": np.zeros((2, 5), np.float32),
                    "dense.0.bias": np.zeros(2, np.float32),
                },
            ),
            "shape_mismatch",
        ),
        (
            lambda r: r.update("a", {"dense.0.weight": np.zeros((2, 4), np.float32)}),
            "shape_mismatch",
        ),
        (_nan_update, "non_finite"),
        (lambda r: r.update("a", delta(8.0, (0, 0))), "norm_bound"),  # |delta| = sqrt(8*64) > 20
        (
            lambda r: r.update(
                "a",
                {
                    "dense.0.weight": np.zeros((2, 30000), np.float32),
                    "dense.0.bias": np.zeros(2, np.float32),
                },
            ),
            "oversize",
        ),
        (lambda r: b"not an envelope at all", "malformed"),
        (
            lambda r: exchange.build_update(
                r.sites["a"],
                "otherfed",
                round=1,
                base_version="v0",
                cluster="global",
                n_samples=1,
                delta=delta(1.0, (0, 0)),
            ),
            "wrong_federation",
        ),
    ],
)
def test_each_bad_update_is_rejected_counted_by_reason_and_not_fatal(tmp_path, make, reason):
    rig = Rig(tmp_path)
    assert rig.send("a", make(rig)) == f"rejected:{reason}"
    assert rig.status()["updates_rejected"] == {reason: 1}
    # the round goes on: good updates still count
    for site in "abc":
        assert rig.send(site, rig.update(site, delta(1.0, (0, 0)))) == "accepted"
    assert rig.status()["rounds_completed"] == 1


def test_bad_signature_is_rejected(tmp_path):
    rig = Rig(tmp_path)
    impostor = load_or_create_identity(tmp_path / "impostor", "a")  # a's name, another key
    payload = exchange.build_update(
        impostor,
        FED,
        round=1,
        base_version="v0",
        cluster="global",
        n_samples=1,
        delta=delta(1.0, (0, 0)),
    )
    assert rig.send("a", payload) == "rejected:bad_signature"
    assert rig.status()["updates_rejected"] == {"bad_signature": 1}


def _receipts(rig, site):
    topic = TOPICS.receipts(site)
    return [
        exchange.open_receipt(p, rig.cloud.public_b64, FED, site=site)
        for t, p, retain in rig.published
        if t == topic and not retain
    ]


def test_resends_are_duplicates_in_any_round_and_a_second_update_is_rejected(tmp_path):
    rig = Rig(tmp_path)
    first = rig.update("a", delta(1.0, (0, 0)))
    update_id = exchange.peek(first).payload["update_id"]
    assert rig.send("a", first) == "accepted"
    assert rig.send("a", first) == "duplicate"  # the same bytes again: a resend
    second = rig.update("a", delta(2.0, (0, 0)))
    assert rig.send("a", second) == "rejected:already_submitted"
    rig.send("b", rig.update("b", delta(1.0, (0, 0))))
    rig.send("c", rig.update("c", delta(1.0, (0, 0))))
    assert rig.status()["rounds_completed"] == 1
    # round 1's update resent in round 2 (its receipt was lost): it landed, and counted once
    assert rig.send("a", first) == "duplicate"
    status = rig.status()
    assert status["updates_rejected"] == {"already_submitted": 1}
    assert status["updates_duplicate"] == 2
    outcomes = [(r.update_id, r.round, r.outcome, r.reason) for r in _receipts(rig, "a")]
    assert outcomes == [
        (update_id, 1, "accepted", ""),
        (update_id, 1, "duplicate", ""),
        (exchange.peek(second).payload["update_id"], 1, "rejected", "already_submitted"),
        (update_id, 1, "duplicate", ""),
    ]
    np.testing.assert_allclose(rig.last_model().weights["dense.0.weight"], np.ones((2, 4)))


def test_another_site_reusing_an_update_id_is_a_replay(tmp_path):
    rig = Rig(tmp_path)
    assert rig.send("a", rig.update("a", delta(1.0, (0, 0)), update_id="shared-id-1")) == "accepted"
    copied = rig.update("b", delta(1.0, (0, 0)), update_id="shared-id-1")
    assert rig.send("b", copied) == "rejected:replay"
    assert [r.outcome for r in _receipts(rig, "b")] == ["rejected"]


def test_updates_that_cannot_be_attributed_get_no_receipt(tmp_path):
    rig = Rig(tmp_path)
    impostor = load_or_create_identity(tmp_path / "impostor", "a")
    forged = exchange.build_update(
        impostor, FED, round=1, base_version="v0", cluster="global", n_samples=1,
        delta=delta(1.0, (0, 0)),
    )  # fmt: skip
    assert rig.send("a", forged) == "rejected:bad_signature"
    assert rig.send("b", rig.update("a", delta(1.0, (0, 0)))) == "rejected:wrong_sender"
    assert rig.send("d", rig.update("d", delta(1.0, (0, 0)))) == "rejected:unknown_site"
    assert rig.send("a", b"junk") == "rejected:malformed"
    assert not [t for t, _, _ in rig.published if "/receipts/" in t]
    # and every refusal a site can be told about is told, with its reason
    assert rig.send("a", rig.update("a", delta(8.0, (0, 0)))) == "rejected:norm_bound"
    assert rig.send("a", rig.update("a", delta(1.0, (0, 0)), round_=5)) == "rejected:wrong_round"
    assert [(r.outcome, r.reason) for r in _receipts(rig, "a")] == [
        ("rejected", "norm_bound"),
        ("rejected", "wrong_round"),
    ]


def test_deadline_without_quorum_extends_the_round(tmp_path):
    rig = Rig(tmp_path, min_sites=2)
    rig.send("a", rig.update("a", delta(1.0, (0, 0))))
    rig.now += 101
    rig.coordinator.tick()
    announcement = rig.last_round()
    assert announcement.round == 1 and announcement.extensions == 1
    assert announcement.deadline == pytest.approx(rig.now + 100)
    assert rig.status()["rounds_completed"] == 0
    rig.send("b", rig.update("b", delta(3.0, (0, 0))))
    assert (
        rig.status()["rounds_completed"] == 0
    )  # quorum, but c may still answer until the deadline
    rig.now += 101
    rig.coordinator.tick()
    assert rig.status()["rounds_completed"] == 1
    np.testing.assert_allclose(rig.last_model().weights["dense.0.weight"], np.full((2, 4), 2.0))


def test_restart_mid_round_resumes_it_and_completes_it_once(tmp_path):
    rig = Rig(tmp_path)
    rig.send("a", rig.update("a", delta(1.0, (0, 0))))
    rig.send("b", rig.update("b", delta(2.0, (0, 0))))
    rig.store.close()  # the process dies: only the database survives
    rig.store = StateStore.open(rig.settings.state_dir)
    rig.restart(model=None)
    rig.coordinator.publish_all()
    assert rig.last_round().round == 1
    assert rig.status()["updates_this_round"] == ["a", "b"]
    rig.send("c", rig.update("c", delta(3.0, (0, 0))))
    assert rig.store.models.count_of_round(1) == 1
    np.testing.assert_allclose(rig.last_model().weights["dense.0.weight"], np.full((2, 4), 2.0))


def test_rounds_limit_finishes_the_federation(tmp_path):
    rig = Rig(tmp_path, rounds=1)
    for site in "abc":
        rig.send(site, rig.update(site, delta(1.0, (0, 0))))
    assert rig.coordinator.finished
    assert rig.last_round().status == "finished"
    assert rig.status()["round_status"] == "finished"
    assert (
        rig.send("a", rig.update("a", delta(1.0, (0, 0)), round_=2, base=rig.last_model().version))
        == "rejected:wrong_round"
    )


def test_enrolment_is_seen_without_restart(tmp_path):
    rig = Rig(tmp_path)
    assert rig.send("d", rig.update("d", delta(1.0, (0, 0)))) == "rejected:unknown_site"
    other = StateStore.open(
        rig.settings.state_dir
    )  # what `ftl-cloud enroll` does, from another process
    other.sites.enroll("d", rig.sites["d"].public_b64)
    other.close()
    assert rig.send("d", rig.update("d", delta(1.0, (0, 0)))) == "accepted"


def test_trust_on_first_use_only_with_the_dev_flag(tmp_path):
    rig = Rig(tmp_path, dev_trust_on_first_use=True)
    assert rig.send("d", rig.update("d", delta(1.0, (0, 0)))) == "accepted"
    assert rig.store.sites.public_key("d") == rig.sites["d"].public_b64


def test_state_dir_of_another_federation_or_backbone_is_refused(tmp_path):
    rig = Rig(tmp_path)
    rig.settings.federation = "other"
    with pytest.raises(CloudStateError, match="belongs to federation"):
        rig.restart()
    rig.settings.federation = FED
    other_backbone = make_tiny_model(tmp_path / "m2")
    (other_backbone.backbone_path).write_bytes(b"another backbone")
    other_backbone.manifest["backbone"]["sha256"] = "0" * 64
    with pytest.raises(CloudStateError, match="another backbone"):
        rig.restart(other_backbone)


def test_new_federation_needs_a_model(tmp_path):
    rig = Rig(tmp_path)
    rig.settings.state_dir = str(tmp_path / "fresh")
    rig.store = StateStore.open(rig.settings.state_dir)
    with pytest.raises(CloudStateError, match="needs --model"):
        rig.restart(None)


def test_twin_states_are_mirrored_and_bad_ones_refused(tmp_path):
    from ftlct.protocol.twin_state import TwinState

    rig = Rig(tmp_path)
    state = exchange.build_twin_state(
        rig.sites["a"], FED, TwinState(status="inferring", model_version="v0")
    )
    assert rig.coordinator.on_message(TOPICS.twin_state("a"), state) == "twin"
    assert rig.coordinator.on_message(TOPICS.twin_state("b"), state) == "twin_rejected:wrong_sender"
    sneaky = seal("twin_state", FED, {"status": "idle", "patient_name": "DOE^JANE"}, rig.sites["b"])
    assert (
        rig.coordinator.on_message(TOPICS.twin_state("b"), sneaky) == "twin_rejected:bad_twin_state"
    )
    will = exchange.build_offline_will(rig.sites["c"], FED)
    assert rig.coordinator.on_message(TOPICS.twin_state("c"), will) == "twin"
    sites = rig.status()["sites"]
    assert (
        sites["a"]["online"]
        and sites["a"]["model_version"] == "v0"
        and sites["a"]["status"] == "inferring"
    )
    assert sites["c"]["online"] is False and sites["b"]["last_seen"] is None
    assert rig.status()["twin_rejected"] == {"wrong_sender": 1, "bad_twin_state": 1}


def test_cfl_split_gives_each_cluster_its_model_and_assignment(tmp_path):
    rig = Rig(tmp_path, strategy="cfl", strategy_params={"eps1": 1.0, "eps2": 0.5})
    rig.send("a", rig.update("a", delta(1.0, (0, 0))))
    rig.send("b", rig.update("b", delta(1.0, (0, 0))))
    rig.send("c", rig.update("c", delta(-1.0, (0, 0)), n=2))  # mean update 0: the sites disagree
    announcement = rig.last_round()
    assert announcement.round == 2 and sorted(announcement.base_versions) == [
        "global.0",
        "global.1",
    ]
    cluster_a, cluster_c = announcement.cluster_for("a"), announcement.cluster_for("c")
    assert cluster_a == announcement.cluster_for("b") and cluster_a != cluster_c
    np.testing.assert_allclose(rig.last_model(cluster_a).weights["dense.0.weight"], np.ones((2, 4)))
    np.testing.assert_allclose(
        rig.last_model(cluster_c).weights["dense.0.weight"], -np.ones((2, 4))
    )
    assert (TOPICS.model("global"), b"", True) in rig.published  # the dissolved cluster is cleared
    base_c = announcement.base_versions[cluster_c]
    wrong = exchange.build_update(
        rig.sites["c"],
        FED,
        round=2,
        base_version=base_c,
        cluster=cluster_a,
        n_samples=1,
        delta=delta(1.0, (0, 0)),
    )
    assert rig.send("c", wrong) == "rejected:wrong_cluster"
    right = exchange.build_update(
        rig.sites["c"],
        FED,
        round=2,
        base_version=base_c,
        cluster=cluster_c,
        n_samples=1,
        delta=delta(1.0, (0, 0)),
    )
    assert rig.send("c", right) == "accepted"
    assert rig.status()["clusters"] == {cluster_a: ["a", "b"], cluster_c: ["c"]}


def test_a_split_in_the_last_round_points_every_site_at_its_final_cluster(tmp_path):
    rig = Rig(tmp_path, strategy="cfl", rounds=1, strategy_params={"eps1": 1.0, "eps2": 0.5})
    rig.send("a", rig.update("a", delta(1.0, (0, 0))))
    rig.send("b", rig.update("b", delta(1.0, (0, 0))))
    rig.send("c", rig.update("c", delta(-1.0, (0, 0)), n=2))
    final = rig.last_round()
    assert final.status == "finished" and final.round == 1
    assert sorted(final.base_versions) == ["global.0", "global.1"]
    # not the round's own assignment (everyone in "global", a cluster that no longer exists)
    for site, expected in (("a", 1.0), ("b", 1.0), ("c", -1.0)):
        cluster = final.cluster_for(site)
        model = rig.last_model(cluster)
        assert model.version == final.base_versions[cluster]
        np.testing.assert_allclose(model.weights["dense.0.weight"], np.full((2, 4), expected))


def test_the_running_cloud_never_decodes_models_from_the_database(tmp_path, monkeypatch):
    rig = Rig(tmp_path)

    def refuse(*args, **kwargs):
        raise AssertionError("the current models are in memory; no decode from the database")

    monkeypatch.setattr(rig.store.models, "weights", refuse)
    monkeypatch.setattr(rig.store.models, "federation_state", refuse)
    rig.coordinator.publish_all()
    for round_ in (1, 2):
        base = rig.last_round().base_versions["global"]
        for site in "abc":
            assert rig.send(
                site, rig.update(site, delta(1.0, (0, 0)), round_=round_, base=base)
            ) == ("accepted")
    assert rig.store.rounds.completed() == 2
    np.testing.assert_allclose(rig.last_model().weights["dense.0.weight"], np.full((2, 4), 2.0))


@pytest.mark.parametrize(
    ("limits", "step", "liar_share"),
    [
        # weights 200, 100, 100: (200 * 1 + 100 * -1 + 100 * -1) / 400
        ({}, 0.0, 0.5),
        # cap 0.4 * 200 / 0.6 = 133.3: (133.3 - 200) / 333.3
        ({"max_site_share": 0.4}, -0.2, 0.4),
        # share unbounded, claims capped at 150: (150 - 200) / 350
        ({"max_site_share": 1.0, "max_update_samples": 150}, -1 / 7, 150 / 350),
    ],
)
def test_one_site_claiming_a_trillion_samples_moves_the_head_by_at_most_its_share(
    tmp_path, limits, step, liar_share
):
    rig = Rig(tmp_path)
    for key, value in limits.items():
        setattr(rig.settings.limits, key, value)
    assert rig.send("a", rig.update("a", delta(1.0, (1, 1)), n=10**12)) == "accepted"
    for honest in "bc":
        assert rig.send(honest, rig.update(honest, delta(-1.0, (-1, -1)), n=100)) == "accepted"
    head = rig.last_model().weights
    # the liar's delta is +1 and the honest ones -1 on every coordinate, so
    # step = share * 1 + (1 - share) * -1 = 2 * share - 1; on main it was +1 (share ~1)
    assert 2 * liar_share - 1 == pytest.approx(step)
    assert liar_share <= limits.get("max_site_share", 0.5)
    np.testing.assert_allclose(head["dense.0.weight"], np.full((2, 4), step), atol=1e-6)
    np.testing.assert_allclose(head["dense.0.bias"], [step, step], atol=1e-6)


def test_a_status_taken_while_the_round_closes_shows_one_committed_state(tmp_path):
    """Another process reads the status while the loop commits the aggregation mid-read."""
    rig = Rig(tmp_path)
    rig.send("a", rig.update("a", delta(1.0, (0, 0))))
    rig.send("b", rig.update("b", delta(1.0, (0, 0))))
    reader = StateStore.open_existing(rig.settings.state_dir)
    read_models = reader.models.federation_state

    def models_while_the_round_closes():
        # the first reads (the round) are done: the loop now closes round 1 and opens round 2
        if not rig.store.rounds.completed():
            assert rig.send("c", rig.update("c", delta(1.0, (0, 0)))) == "accepted"
            assert rig.store.rounds.completed() == 1
        return read_models()

    reader.models.federation_state = models_while_the_round_closes
    try:
        during = status_report(reader)
        after = status_report(reader)
    finally:
        reader.close()
    # as of the commit before the last update: round 1 open, none completed, base v0
    assert (during["round"], during["round_status"], during["rounds_completed"]) == (1, "open", 0)
    assert during["global_versions"] == {"global": "v0"}
    assert during["updates_this_round"] == ["a", "b"]
    assert after["round"] == 2 and after["rounds_completed"] == 1
    assert after["global_versions"]["global"].startswith("r1-global-")


def test_a_stored_update_outranks_any_other_refusal_as_before(tmp_path):
    """The store is asked only once a check fails or the insert is refused; the verdicts are
    those of asking it first: duplicate and replay before the round's rules, a second update
    in the round before the strategy's check and the norm bound."""
    rig = Rig(tmp_path)
    first = rig.update("a", delta(1.0, (0, 0)), update_id="first-of-a")
    assert rig.send("a", first) == "accepted"
    too_big = rig.update("a", delta(8.0, (0, 0)))  # over the norm bound, and a second update
    assert rig.send("a", too_big) == "rejected:already_submitted"
    wrong_shape = rig.update("a", {"dense.0.weight": np.zeros((3, 3), np.float32)})
    assert rig.send("a", wrong_shape) == "rejected:already_submitted"
    late_copy = rig.update("b", delta(1.0, (0, 0)), round_=7, update_id="first-of-a")
    assert rig.send("b", late_copy) == "rejected:replay"  # not wrong_round
    resent_elsewhere = rig.update("a", delta(1.0, (0, 0)), round_=7, update_id="first-of-a")
    assert rig.send("a", resent_elsewhere) == "duplicate"  # the id is a's: it landed
    assert rig.send("b", rig.update("b", delta(8.0, (0, 0)))) == "rejected:norm_bound"
    assert rig.status()["updates_rejected"] == {
        "already_submitted": 2,
        "replay": 1,
        "norm_bound": 1,
    }


def test_the_round_closes_on_its_stored_updates_across_a_restart_and_a_failed_commit(
    tmp_path, monkeypatch
):
    rig = Rig(tmp_path)
    assert rig.send("a", rig.update("a", delta(1.0, (0, 0)))) == "accepted"
    rig.restart()  # counts what the store holds for the round, not what it saw itself
    b = rig.update("b", delta(1.0, (0, 0)))
    with monkeypatch.context() as patched:

        def full_disk(name, by=1):
            raise sqlite3.OperationalError("database or disk is full")

        patched.setattr(rig.store.counters, "bump", full_disk)
        with pytest.raises(sqlite3.OperationalError):
            rig.send("b", b)  # the batch's commit fails: b was not stored, nor counted
    assert rig.status()["rounds_completed"] == 0
    assert rig.send("c", rig.update("c", delta(1.0, (0, 0)))) == "accepted"
    assert rig.status()["rounds_completed"] == 0  # two of three stored
    assert rig.send("b", b) == "accepted"
    assert rig.status()["rounds_completed"] == 1
