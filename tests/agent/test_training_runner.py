"""Training takes a plan and returns (delta, n_samples, metrics); sync releases it once."""

from __future__ import annotations

import time

import numpy as np
import pytest

from ftlct.agent.labels.label_store import LabelStore
from ftlct.agent.privacy.ledger import PrivacyLedger
from ftlct.agent.settings import LoggingSettings, PrivacySettings, TrainingSettings
from ftlct.agent.store.database import Database
from ftlct.agent.sync.outbox import Outbox
from ftlct.agent.sync.received_messages import ReceivedMessages
from ftlct.agent.sync.round_plan import RoundPlanner
from ftlct.agent.sync.site_identity import site_identity
from ftlct.agent.sync.training_log import TrainingLog
from ftlct.agent.sync.update_release import UpdateRelease
from ftlct.agent.training import runner as runner_module
from ftlct.agent.training.local_round import (
    LocalRoundResult,
    NoResult,
    TrainingPlan,
    train_from_data_dir,
)
from ftlct.agent.training.recipe import recipe_for
from ftlct.agent.training.runner import (
    RESULT_PREFIX,
    TrainingRunner,
    decode_result,
    encode_result,
)
from ftlct.protocol.exchange import open_global_model, open_round
from tests.agent.federation_support import (
    BACKBONE,
    FED,
    LABELS,
    ScriptedCloud,
    site_with_embeddings,
    zero_head,
)

SETTINGS = TrainingSettings(min_samples=6, epochs=5, lr=0.05, follow_round=False)


@pytest.fixture
def site(tmp_path):
    layout, records = site_with_embeddings(tmp_path / "agent", per_class=3, slices=2)
    db = Database(layout.index)
    LabelStore(db).set_many([(r.series_uid, r.label) for r in records], LABELS, "test")
    db.close()
    cloud = ScriptedCloud(tmp_path / "cloud-keys")
    model = open_global_model(
        cloud.model("v0", zero_head()), cloud.key, FED, backbone_sha256=BACKBONE, labels=LABELS
    )
    return layout, cloud, TrainingPlan(1, model, recipe_for(SETTINGS, {}))


def wait_for_result(runner: TrainingRunner, timeout: float = 120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = runner.poll()
        if result is not None:
            return result
        time.sleep(0.1)
    raise AssertionError("the training child did not finish")


def test_the_child_process_returns_what_in_process_training_returns(site):
    layout, _cloud, plan = site
    here = train_from_data_dir(plan, SETTINGS, layout.root)
    assert isinstance(here, LocalRoundResult) and here.n_samples > 0
    runner = TrainingRunner(SETTINGS, LoggingSettings(), layout.root)
    runner.start(plan)
    there = wait_for_result(runner)
    assert isinstance(there, LocalRoundResult)
    assert there.n_samples == here.n_samples
    assert set(there.delta) == set(here.delta)
    for name in here.delta:  # same seed, one thread: the same delta, bit for bit
        assert np.array_equal(there.delta[name], here.delta[name])
    timing = {"train_seconds"}
    assert {k: v for k, v in there.metrics.items() if k not in timing} == {
        k: v for k, v in here.metrics.items() if k not in timing
    }


def test_a_result_larger_than_the_pipe_comes_back_whole(tmp_path):
    """A closed-form round over 1280-d embeddings returns ~4 MiB of base64: the child must not
    block on a full pipe while serve waits for it to exit."""
    layout, records = site_with_embeddings(tmp_path / "wide", per_class=3, slices=2, dim=1280)
    db = Database(layout.index)
    LabelStore(db).set_many([(r.series_uid, r.label) for r in records], LABELS, "test")
    db.close()
    cloud = ScriptedCloud(tmp_path / "cloud-keys")
    model = open_global_model(
        cloud.model("v0", zero_head(1280)), cloud.key, FED, backbone_sha256=BACKBONE, labels=LABELS
    )
    plan = TrainingPlan(1, model, recipe_for(SETTINGS, {"update_kind": "statistics"}))
    runner = TrainingRunner(SETTINGS, LoggingSettings(), layout.root)
    runner.start(plan)
    result = wait_for_result(runner)
    assert isinstance(result, LocalRoundResult), result
    assert result.delta["stats.gram_upper"].shape == (1280 * 1281 // 2,)
    assert len(encode_result(result)) > 4 * 1024 * 1024 > 65536


def test_a_child_without_agent_data_reports_a_failure(site, tmp_path):
    _layout, _cloud, plan = site
    runner = TrainingRunner(SETTINGS, LoggingSettings(), tmp_path / "no-data-here")
    runner.start(plan)
    result = wait_for_result(runner)
    assert isinstance(result, NoResult) and result.outcome == "failed"
    assert "no agent index" in result.reason


def test_the_result_line_round_trips_and_a_garbled_one_is_a_failure(site, monkeypatch):
    delta = {"dense.0.weight": np.arange(6, dtype=np.float32).reshape(2, 3)}
    back = decode_result(encode_result(LocalRoundResult(delta, 7, {"epochs": 5.0})))
    assert back.n_samples == 7 and np.array_equal(
        back.delta["dense.0.weight"], delta["dense.0.weight"]
    )
    layout, _cloud, plan = site
    garbled = "import sys; sys.stdin.buffer.read(); print(%r)" % (
        RESULT_PREFIX + '{"outcome": "trained"'
    )
    monkeypatch.setattr(runner_module, "CHILD", garbled)
    runner = TrainingRunner(SETTINGS, LoggingSettings(), layout.root)
    runner.start(plan)
    result = wait_for_result(runner)
    assert result == NoResult("failed", "training process exited with 0")


def test_a_second_release_for_the_same_round_is_a_skip_not_a_second_update(site):
    layout, cloud, _plan = site
    db = Database(layout.index)
    received, outbox, ledger = ReceivedMessages(db), Outbox(db), PrivacyLedger(db)
    payload = cloud.round(1, "v0")
    received.save_round(payload, open_round(payload, cloud.key, FED))
    model_payload = cloud.model("v0", zero_head())
    model = open_global_model(
        model_payload, cloud.key, FED, backbone_sha256=BACKBONE, labels=LABELS
    )
    received.save_model(model_payload, model)
    planner = RoundPlanner(SETTINGS, PrivacySettings(), received, outbox, ledger, lambda m: 12)
    plan = planner.plan("site-r", FED)
    release = UpdateRelease(
        db, site_identity(layout.root, "site-r"), PrivacySettings(), outbox, ledger, TrainingLog(db)
    )
    result = LocalRoundResult(zero_head(), 12, {"epochs": 5.0})
    assert release.release(plan, result).trained
    again = release.release(plan, result)  # e.g. serve and `ftl-agent train` at once
    assert again.outcome == "skipped" and "already made" in again.reason
    assert outbox.count() == 1
    assert planner.plan("site-r", FED).reason == "already made this site's update for round 1"
    db.close()
