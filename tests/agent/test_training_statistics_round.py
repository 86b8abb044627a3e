"""A closed-form round at the site: statistics of the labelled embeddings instead of a delta,
clipped as announced, noised and charged with DP on; the validation report in the metrics."""

from __future__ import annotations

import numpy as np
import pytest

from ftlct.agent.privacy import mechanism as privacy
from ftlct.agent.status import collect_status
from ftlct.agent.store.database import Database
from ftlct.agent.sync.local_rounds import run_local_round
from ftlct.agent.sync.outbox import Outbox
from ftlct.agent.training.labelled_data import holdout_split, labelled_data
from ftlct.export.closed_form_head import HeadStatistics, sensitivity, site_statistics
from ftlct.protocol.exchange import open_update
from ftlct.protocol.identity import load_identity
from ftlct.protocol.validation_report import read_report
from tests.agent.federation_support import (
    BACKBONE,
    FED,
    LABELS,
    ScriptedCloud,
    site_with_embeddings,
    zero_head,
)
from tests.agent.test_training_local_round import SITE, label, receive, settings_for


@pytest.fixture
def site(tmp_path):
    layout, records = site_with_embeddings(tmp_path / "agent", per_class=4, slices=3)
    return layout, records, ScriptedCloud(tmp_path / "cloud-keys")


CLOSED_FORM = {"update_kind": "statistics", "solver": "discriminant", "shrinkage": 0.5}


def queued_update(layout):
    db = Database(layout.index)
    rows = Outbox(db).entries()
    db.close()
    key = load_identity(layout.root / "keys", SITE).public_b64
    return open_update(rows[-1].payload, lambda _: key, FED)


def training_split(layout, settings):
    db = Database(layout.index)
    data = labelled_data(layout.root, db, BACKBONE, LABELS)
    db.close()
    train, val = holdout_split(data, settings.training.val_fraction, settings.training.seed)
    return data.take(train), data.take(val)


def test_a_closed_form_round_sends_the_statistics_of_the_training_slices(site):
    layout, records, cloud = site
    training = {**CLOSED_FORM, "max_embedding_norm": 2.0, "codec": "int8"}
    receive(layout, cloud, cloud.round(1, "v0", training=training), cloud.model("v0", zero_head()))
    label(layout, [(r.study_uid, r.label) for r in records])
    settings = settings_for(layout, **{"training.follow_round": True})
    outcome = run_local_round(settings, layout.root)
    assert outcome.trained, outcome.reason
    update = queued_update(layout)
    assert update.kind == "statistics" and update.codec == "fp32"  # not the announced int8
    train, val = training_split(layout, settings)
    assert update.n_samples == len(train) == 18  # 2 of 8 series held out, as for a delta
    expected = site_statistics(train.vectors, train.labels, 2, clip_norm=2.0).to_arrays()
    for name, value in expected.items():
        np.testing.assert_allclose(update.delta[name], value, rtol=1e-6, atol=1e-5)
    norms = np.linalg.norm(train.vectors, axis=1)
    assert update.metrics["n_clipped"] == np.count_nonzero(norms > 2.0) > 0
    # the held-out series: the site's own solved head separates them, the zero head does not
    assert update.metrics["val_f1"] == 1.0 and update.metrics["global_val_f1"] < 1.0
    report = read_report(update.metrics, 2)
    assert report.sum() == len(val) == 6 and report[:, 0].sum() == 6  # zero head: all class 0


def test_with_dp_on_the_statistics_are_noised_and_the_release_is_charged(site):
    layout, records, cloud = site
    receive(
        layout, cloud, cloud.round(1, "v0", training=CLOSED_FORM), cloud.model("v0", zero_head())
    )
    label(layout, [(r.study_uid, r.label) for r in records])
    settings = settings_for(
        layout,
        **{
            "privacy.enabled": True,
            "privacy.noise_multiplier": 2.0,
            "privacy.statistics_clip_norm": 1.5,
            "privacy.epsilon_limit": 0.0,
        },
    )
    assert run_local_round(settings, layout.root).trained
    update = queued_update(layout)
    train, _ = training_split(layout, settings)
    exact = site_statistics(train.vectors, train.labels, 2, clip_norm=1.5)
    noised = HeadStatistics.from_arrays(update.delta)
    noise = noised.gram - exact.gram
    std = 2.0 * sensitivity(1.5)  # z * sqrt(C^4 + C^2 + 1)
    upper = noise[np.triu_indices(8)]
    assert np.allclose(noise, noise.T) and 0.6 * std < upper.std() < 1.5 * std
    assert update.metrics == {}  # nothing data-dependent beside the noised statistics
    assert update.n_samples == max(1, round(noised.n))  # the noised count, not the exact 18
    db = Database(layout.index)
    spent = collect_status(db)["federation"]["privacy"]
    db.close()
    rho = privacy.rho_per_release(2.0)
    assert spent["rounds"] == 1 and spent["epsilon_spent"] == pytest.approx(
        privacy.epsilon_of(rho, 1e-5)
    )


def test_a_delta_round_reports_the_base_heads_confusion_on_the_held_out_series(site):
    layout, records, cloud = site
    head = zero_head()
    head["dense.0.bias"] = np.array([0.0, 1.0], np.float32)  # predicts abnormal everywhere
    receive(layout, cloud, cloud.round(1, "v0"), cloud.model("v0", head))
    label(layout, [(r.study_uid, r.label) for r in records])
    assert run_local_round(settings_for(layout), layout.root).trained
    report = read_report(queued_update(layout).metrics, 2)
    np.testing.assert_array_equal(report, [[0, 3], [0, 3]])  # one held-out series per class


def inbox_for(tmp_path, cloud, serve):
    from ftlct.agent.store.layout import DataDir
    from ftlct.agent.sync.inbox import Inbox
    from ftlct.agent.sync.model_events import ModelEvents
    from ftlct.agent.sync.model_pin import ModelPin
    from ftlct.agent.sync.outbox import Outbox
    from ftlct.agent.sync.receipts import Receipts
    from ftlct.agent.sync.received_messages import ReceivedMessages

    db = Database(DataDir(tmp_path / serve).create().index)
    offered = []
    inbox = Inbox(
        SITE, FED, cloud.key, db, ReceivedMessages(db), ModelEvents(db),
        lambda: ModelPin("head", LABELS, backbone_sha256=BACKBONE),
        Receipts(SITE, FED, cloud.key, db, Outbox(db)),
        model_for_me=lambda model: offered.append(model.version), serve=serve,
    )  # fmt: skip
    return inbox, offered, db


def test_an_agent_serving_the_best_installs_from_best_and_trains_from_the_last(tmp_path):
    from ftlct.agent.sync.received_messages import ReceivedMessages
    from ftlct.protocol.topics import Topics

    topics = Topics(FED)
    cloud = ScriptedCloud(tmp_path / "cloud-keys")
    last, best = cloud.model("r3", zero_head(), 3), cloud.model("r1", zero_head(), 1)
    for serve, expected in (("last", ["r3", "r3"]), ("best", ["r1", "r1"])):
        inbox, offered, db = inbox_for(tmp_path, cloud, serve)
        assert inbox.handle(topics.model("global"), last) == "model_kept"
        assert inbox.handle(topics.best_model("global"), best) == "model_kept"
        # offers the served one again
        assert inbox.handle(topics.rounds_current, cloud.round(4, "r3")) == "round_kept"
        received = ReceivedMessages(db)
        assert received.load_model("global").version == "r3"  # the base to train from
        assert received.load_model("global", best=True).version == "r1"
        assert offered == expected
        db.close()
