"""A local round on kept embeddings: planned without torch, trained, signed, queued in the outbox."""

from __future__ import annotations

import numpy as np
import pytest

from ftlct.agent.labels.label_store import LabelStore
from ftlct.agent.privacy import mechanism as privacy
from ftlct.agent.settings import load_settings
from ftlct.agent.status import collect_status
from ftlct.agent.store.database import Database
from ftlct.agent.sync.local_rounds import run_local_round
from ftlct.agent.sync.outbox import Outbox
from ftlct.agent.sync.received_messages import ReceivedMessages
from ftlct.agent.training.labelled_data import holdout_split, labelled_data
from ftlct.protocol.exchange import open_global_model, open_round, open_update
from ftlct.protocol.identity import load_identity
from tests.agent.federation_support import (
    BACKBONE,
    FED,
    LABELS,
    ScriptedCloud,
    site_with_embeddings,
    zero_head,
)

SITE = "site-a"


@pytest.fixture
def site(tmp_path):
    layout, records = site_with_embeddings(tmp_path / "agent", per_class=4, slices=3)
    cloud = ScriptedCloud(tmp_path / "cloud-keys")
    return layout, records, cloud


def settings_for(layout, **overrides):
    values = {
        "storage.data_dir": layout.root,
        "federation.site": SITE,
        "federation.name": FED,
        "training.min_samples": 6,
        "training.epochs": 20,
        "training.lr": 0.05,
        "training.follow_round": False,
        **overrides,
    }
    return load_settings(env={}, overrides=values)


def receive(layout, cloud, round_payload=None, model_payload=None):
    db = Database(layout.index)
    fed = ReceivedMessages(db)
    if round_payload is not None:
        fed.save_round(round_payload, open_round(round_payload, cloud.key, FED))
    if model_payload is not None:
        model = open_global_model(
            model_payload, cloud.key, FED, backbone_sha256=BACKBONE, labels=LABELS
        )
        fed.save_model(model_payload, model)
    db.close()


def label(layout, pairs):
    db = Database(layout.index)
    summary = LabelStore(db).set_many(pairs, LABELS, "test")
    db.close()
    return summary


def test_a_round_trains_from_the_global_head_and_queues_a_signed_delta(site):
    layout, records, cloud = site
    receive(
        layout,
        cloud,
        cloud.round(1, "v0", training={"max_delta_norm": 50.0}),
        cloud.model("v0", zero_head()),
    )
    label(layout, [(r.study_uid, r.label) for r in records])
    settings = settings_for(layout)

    outcome = run_local_round(settings, layout.root)
    assert outcome.trained, outcome.reason
    assert outcome.round == 1 and outcome.n_samples == 18  # 24 slices, 2 of 8 series held out
    assert outcome.metrics["n_val"] == 6 and outcome.metrics["val_f1"] == 1.0
    assert outcome.metrics["global_val_f1"] < outcome.metrics["val_f1"]

    db = Database(layout.index)
    rows = Outbox(db).entries()
    assert len(rows) == 1 and rows[0].topic == f"ftl/{FED}/updates/{SITE}"
    assert collect_status(db)["outbox"] == 1
    db.close()
    key = load_identity(layout.root / "keys", SITE).public_b64
    update = open_update(rows[0].payload, lambda site: key if site == SITE else None, FED)
    assert (update.round, update.base_version, update.cluster) == (1, "v0", "global")
    assert update.update_id == outcome.update_id and update.n_samples == 18
    assert set(update.delta) == {"dense.0.weight", "dense.0.bias"}
    weight = update.delta["dense.0.weight"]
    # the head learned the separating axis: abnormal up, normal down on feature 0
    assert weight[1, 0] - weight[0, 0] > 0.1
    assert privacy.l2_norm(update.delta) <= 50.0
    assert update.metrics["val_f1"] == 1.0

    again = run_local_round(settings, layout.root)
    assert again.outcome == "skipped" and "already made" in again.reason


def test_the_announced_norm_bound_clips_the_delta(site):
    layout, records, cloud = site
    receive(
        layout,
        cloud,
        cloud.round(1, "v0", training={"max_delta_norm": 0.01}),
        cloud.model("v0", zero_head()),
    )
    label(layout, [(r.series_uid, r.label) for r in records])
    outcome = run_local_round(settings_for(layout), layout.root)
    assert outcome.trained
    assert outcome.metrics["delta_norm_raw"] > 0.01 >= outcome.metrics["delta_norm"]


def test_too_few_labels_skip_with_the_reason_and_no_update(site):
    layout, records, cloud = site
    receive(layout, cloud, cloud.round(1, "v0"), cloud.model("v0", zero_head()))
    label(layout, [(records[0].series_uid, records[0].label)])  # 3 slices
    outcome = run_local_round(settings_for(layout), layout.root)
    assert outcome.outcome == "skipped"
    assert "3 labelled slices, training needs at least 6" in outcome.reason
    db = Database(layout.index)
    status = collect_status(db)
    db.close()
    assert status["outbox"] == 0
    assert status["federation"]["last_training"]["outcome"] == "skipped"
    assert "3 labelled slices" in status["federation"]["last_training"]["reason"]


@pytest.mark.parametrize(
    ("round_args", "model_version", "reason"),
    [
        (None, "v0", "no round announced"),
        ({"number": 2, "base": "v1", "status": "finished"}, "v1", "round 2 is finished"),
        ({"number": 2, "base": "v1"}, "v0", "round 2 trains from v1; global model received: v0"),
    ],
)
def test_rounds_that_cannot_be_trained_say_why(site, round_args, model_version, reason):
    layout, records, cloud = site
    payload = cloud.round(**round_args) if round_args else None
    receive(layout, cloud, payload, cloud.model(model_version, zero_head()))
    label(layout, [(r.study_uid, r.label) for r in records])
    outcome = run_local_round(settings_for(layout), layout.root)
    assert outcome.outcome == "skipped" and reason in outcome.reason


def test_differential_privacy_spends_budget_and_stops_at_the_limit(site):
    layout, records, cloud = site
    label(layout, [(r.study_uid, r.label) for r in records])
    rho = privacy.rho_per_release(2.0)
    one_round = privacy.epsilon_of(rho, 1e-5)
    two_rounds = privacy.epsilon_of(2 * rho, 1e-5)  # zCDP composes rho, not epsilon
    assert one_round < two_rounds < 2 * one_round
    settings = settings_for(
        layout,
        **{
            "privacy.enabled": True,
            "privacy.clip_norm": 0.5,
            "privacy.noise_multiplier": 2.0,
            "privacy.epsilon_limit": (one_round + two_rounds) / 2,  # room for one round, not two
        },
    )
    receive(layout, cloud, cloud.round(1, "v0"), cloud.model("v0", zero_head()))
    first = run_local_round(settings, layout.root)
    assert first.trained
    # only data-independent metrics travel under DP
    db = Database(layout.index)
    payload = Outbox(db).entries()[0].payload
    db.close()
    key = load_identity(layout.root / "keys", SITE).public_b64
    update = open_update(payload, lambda _: key, FED)
    assert set(update.metrics) == {"epochs", "n_train"}

    receive(layout, cloud, cloud.round(2, "v1"), cloud.model("v1", zero_head(), round_no=1))
    second = run_local_round(settings, layout.root)
    assert second.outcome == "skipped" and "privacy budget exhausted" in second.reason

    db = Database(layout.index)
    spent = collect_status(db)["federation"]["privacy"]
    db.close()
    assert spent["rounds"] == 1 and spent["enabled"]
    assert spent["epsilon_spent"] == pytest.approx(one_round)
    assert spent["epsilon_last_round"] == pytest.approx(one_round)


def test_labels_join_at_the_most_specific_level_and_the_holdout_is_by_series(site):
    layout, records, _cloud = site
    first = records[0]
    label(
        layout,
        [(first.study_uid, "normal"), (first.sop_uids[0], "abnormal")]
        + [(r.series_uid, r.label) for r in records[1:]],
    )
    db = Database(layout.index)
    data = labelled_data(layout.root, db, BACKBONE, LABELS)
    db.close()
    assert len(data) == 24 and data.n_series == 8
    own = [i for i, s in enumerate(data.series.tolist()) if s == first.series_uid]
    assert sorted(data.labels[own].tolist()) == [0, 0, 1]  # the instance label wins for its slice
    train, val = holdout_split(data, 0.25, seed=3)
    assert set(data.series[train].tolist()).isdisjoint(data.series[val].tolist())
    again_train, again_val = holdout_split(data, 0.25, seed=3)
    assert np.array_equal(val, again_val) and np.array_equal(train, again_train)
    assert len(set(data.series[val].tolist())) == 2  # one series of each class
