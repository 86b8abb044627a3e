"""Limits on what a round may ask of a site: its recipe is bounded (out-of-bounds rounds are
refused and counted, never trained on clamped values), its training child has a wall-clock
limit (killed with its process group, the round recorded failed, not tried again), and with
DP on the update does not carry the exact sample count."""

from __future__ import annotations

import dataclasses
import os
import time

import pytest

from ftlct.agent.labels.label_store import LabelStore
from ftlct.agent.privacy.ledger import PrivacyLedger
from ftlct.agent.settings import LoggingSettings, PrivacySettings, TrainingSettings
from ftlct.agent.store.database import Database
from ftlct.agent.sync.local_rounds import TrainingSchedule, rounds_refused_for_recipe
from ftlct.agent.sync.outbox import Outbox
from ftlct.agent.sync.received_messages import ReceivedMessages
from ftlct.agent.sync.round_plan import RoundPlanner
from ftlct.agent.sync.site_identity import site_identity
from ftlct.agent.sync.training_log import TrainingLog
from ftlct.agent.sync.update_release import UpdateRelease, sent_sample_count
from ftlct.agent.training import runner as runner_module
from ftlct.agent.training.local_round import LocalRoundResult, NoResult, TrainingPlan
from ftlct.agent.training.recipe import RecipeRefused, recipe_for
from ftlct.agent.training.runner import TIMED_OUT, TrainingRunner
from ftlct.protocol.exchange import open_global_model, open_round, open_update
from tests.agent.federation_support import (
    BACKBONE,
    FED,
    LABELS,
    ScriptedCloud,
    site_with_embeddings,
    zero_head,
)

SITE = "site-l"
SETTINGS = TrainingSettings(min_samples=6, epochs=5, lr=0.05)


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def site(tmp_path):
    """A site with labelled embeddings, the round's base model kept and round ``n`` announced
    by ``announce(n, training)``."""
    layout, records = site_with_embeddings(tmp_path / "agent", per_class=3, slices=2)
    db = Database(layout.index)
    LabelStore(db).set_many([(r.series_uid, r.label) for r in records], LABELS, "test")
    cloud = ScriptedCloud(tmp_path / "cloud-keys")
    received = ReceivedMessages(db)
    model_payload = cloud.model("v0", zero_head())
    received.save_model(
        model_payload,
        open_global_model(model_payload, cloud.key, FED, backbone_sha256=BACKBONE, labels=LABELS),
    )

    def announce(number: int, training: dict) -> None:
        payload = cloud.round(number, "v0", training=training)
        received.save_round(payload, open_round(payload, cloud.key, FED))

    yield layout, db, received, announce
    db.close()


def schedule_for(layout, db, received, settings, privacy=PrivacySettings(), clock=None):
    outbox, ledger, log = Outbox(db), PrivacyLedger(db), TrainingLog(db)
    planner = RoundPlanner(settings, privacy, received, outbox, ledger, lambda model: 12)
    runner = TrainingRunner(settings, LoggingSettings(), layout.root)
    release = UpdateRelease(db, site_identity(layout.root, SITE), privacy, outbox, ledger, log)
    clock = clock or Clock()
    return TrainingSchedule(settings, (SITE, FED), db, planner, runner, release, log, clock), clock


@pytest.mark.parametrize(
    ("announced", "named"),
    [
        ({"local_epochs": 10**6}, "local_epochs"),
        ({"batch_size": 2**40}, "batch_size"),
        ({"lr": 1e3}, "lr"),
        ({"lr": 1e-12}, "lr"),
        ({"lr": float("nan")}, "lr"),
        ({"fedprox_mu": 1e9}, "fedprox_mu"),
        ({"batch_size": "big"}, "batch_size"),
        ({"local_epochs": True}, "local_epochs"),
        ({"codec": "zip"}, "codec"),
    ],
)
def test_a_recipe_outside_the_bounds_is_refused_naming_the_value(announced, named):
    with pytest.raises(RecipeRefused, match=named):
        recipe_for(SETTINGS, {"local_epochs": 2, **announced})


def test_a_recipe_within_the_bounds_is_followed_as_announced():
    recipe = recipe_for(SETTINGS, {"local_epochs": 50, "batch_size": 4096, "lr": 1.0})
    assert (recipe.epochs, recipe.batch_size, recipe.lr) == (50, 4096, 1.0)
    tighter = dataclasses.replace(SETTINGS, max_local_epochs=3)
    with pytest.raises(RecipeRefused, match=r"training.max_local_epochs"):
        recipe_for(tighter, {"local_epochs": 4})


def test_a_round_asking_for_a_million_epochs_is_refused_counted_once_and_never_trained(site):
    layout, db, received, announce = site
    announce(1, {"local_epochs": 10**6, "max_delta_norm": 100.0})
    schedule, clock = schedule_for(layout, db, received, SETTINGS)
    for _ in range(3):  # planned again and again: counted once
        assert schedule.tick() is False
        clock.now += 10
    assert not schedule.runner.running
    assert rounds_refused_for_recipe(db) == 1
    last = TrainingLog(db).last()
    assert last["outcome"] == "refused" and "local_epochs 1e+06" in last["reason"]
    assert Outbox(db).count() == 0

    announce(2, {"local_epochs": 1, "max_delta_norm": 100.0})  # the next round is fine
    assert schedule.tick() is True and schedule.runner.running
    schedule.stop()
    assert rounds_refused_for_recipe(db) == 1


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_training_child_past_its_wall_clock_limit_is_killed_with_its_process_group(
    site, tmp_path, monkeypatch
):
    """The child (and a grandchild it started) hang; at the limit both are gone and the round
    comes back failed with the reason."""
    layout, _db, _received, _announce = site
    pids = tmp_path / "pids"
    hanging = (
        "import os, subprocess, sys, time; sys.stdin.buffer.read();"
        "g = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']);"
        f"open({str(pids)!r}, 'w').write(f'{{os.getpid()}} {{g.pid}}'); time.sleep(600)"
    )
    monkeypatch.setattr(runner_module, "CHILD", hanging)
    settings = dataclasses.replace(SETTINGS, max_duration_s=3.0)
    runner = TrainingRunner(settings, LoggingSettings(), layout.root)
    runner.start(TrainingPlan(1, None, recipe_for(settings, {})))
    deadline = time.monotonic() + 60
    while not (pids.is_file() and pids.read_text()):
        assert time.monotonic() < deadline, "the child did not start"
        time.sleep(0.1)
    child, grandchild = map(int, pids.read_text().split())
    result = None
    while result is None:
        assert time.monotonic() < deadline, "the runner never gave up on the child"
        result = runner.poll()
        time.sleep(0.1)
    assert isinstance(result, NoResult) and result.outcome == "failed"
    assert result.reason.startswith(TIMED_OUT) and "max_duration_s = 3 s" in result.reason
    assert not runner.running
    assert not alive(child)
    deadline = time.monotonic() + 10  # the grandchild is reparented, then reaped by init
    while alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(grandchild)


def test_a_round_whose_real_training_runs_out_of_time_is_recorded_failed_and_not_retried(site):
    """The real training child (torch) under a limit shorter than its start: killed, the round
    failed in the training log, the schedule free again, and the same round not started again."""
    layout, db, received, announce = site
    announce(1, {"max_delta_norm": 100.0})
    settings = dataclasses.replace(SETTINGS, max_duration_s=0.5)
    schedule, clock = schedule_for(layout, db, received, settings)
    assert schedule.tick() is True and schedule.runner.running
    deadline = time.monotonic() + 60
    while schedule.active:
        assert time.monotonic() < deadline
        schedule.tick()
        time.sleep(0.1)
    last = TrainingLog(db).last()
    assert last["outcome"] == "failed" and last["reason"].startswith(TIMED_OUT)
    assert Outbox(db).count() == 0
    clock.now += 3600  # long past the failure backoff: the round is not tried again
    assert schedule.tick() is False and not schedule.runner.running
    assert "ran out of time" in db.get_meta("training.last_skip")


@pytest.mark.parametrize(
    ("exact", "sent"), [(1, 50), (12, 50), (74, 50), (76, 100), (1234, 1250), (100, 100)]
)
def test_with_dp_on_the_sample_count_is_rounded_to_its_bucket(exact, sent):
    assert sent_sample_count(exact, PrivacySettings(enabled=True)) == sent
    assert sent_sample_count(exact, PrivacySettings(enabled=False)) == exact


def test_a_dp_update_on_the_wire_carries_the_bucketed_count_not_the_exact_one(site):
    layout, db, received, announce = site
    announce(1, {"max_delta_norm": 100.0})
    privacy = PrivacySettings(enabled=True, epsilon_limit=0)
    outbox, ledger, log = Outbox(db), PrivacyLedger(db), TrainingLog(db)
    planner = RoundPlanner(SETTINGS, privacy, received, outbox, ledger, lambda model: 12)
    identity = site_identity(layout.root, SITE)
    release = UpdateRelease(db, identity, privacy, outbox, ledger, log)
    outcome = release.release(
        planner.plan(SITE, FED), LocalRoundResult(zero_head(), 37, {"epochs": 5.0})
    )
    assert outcome.trained
    (entry,) = outbox.entries()
    update = open_update(entry.payload, {SITE: identity.public_b64}.get, FED)
    assert update.n_samples == 50 != 37
