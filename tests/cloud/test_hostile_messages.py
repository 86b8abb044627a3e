"""Nothing a message holds stops the round loop: every failure is a counted refusal."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from tests.cloud import hostile
from tests.cloud.harness import FED, delta
from tests.cloud.test_round_coordinator import TOPICS, Rig
from tests.support.panic import PanicException


def _good_round(rig):
    for site in "abc":
        assert rig.send(site, rig.update(site, delta(1.0, (0, 0)))) == "accepted"
    assert rig.store.rounds.completed() == 1


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda rig: hostile.nested_header(), "header_limits"),
        (lambda rig: hostile.long_integer_header(), "header_limits"),
        (
            lambda rig: hostile.signed_but_impossible(
                rig.sites["a"], FED, rig.update("a", delta(1.0, (0, 0)))
            )["n_samples 2**63"],
            "malformed",
        ),
        (
            lambda rig: hostile.signed_but_impossible(
                rig.sites["a"], FED, rig.update("a", delta(1.0, (0, 0)), codec="int8")
            )["codec_params list"],
            "malformed",
        ),
    ],
)
def test_messages_that_killed_the_cloud_are_counted_refusals(tmp_path, make, reason):
    rig = Rig(tmp_path)
    assert rig.send("a", make(rig)) == f"rejected:{reason}"
    assert rig.status()["updates_rejected"] == {reason: 1}
    _good_round(rig)


def test_retained_junk_on_twins_is_refused_every_time_and_never_fatal(tmp_path):
    rig = Rig(tmp_path)
    for _ in range(3):  # the broker hands a retained message over at every (re)subscribe
        outcome = rig.coordinator.on_message(TOPICS.twin_state("x"), hostile.nested_header(), True)
        assert outcome == "twin_rejected:header_limits"
    assert rig.status()["twin_rejected"] == {"header_limits": 3}
    _good_round(rig)


def test_a_retained_update_is_handled_once_and_cleared(tmp_path):
    rig = Rig(tmp_path)
    junk = hostile.long_integer_header()
    assert rig.coordinator.on_message(TOPICS.updates("a"), junk, True) == "rejected:header_limits"
    assert (TOPICS.updates("a"), b"", True) in rig.published  # cleared on the broker
    # the broker echoes the clearing message: an empty payload is nothing to count
    assert rig.coordinator.on_message(TOPICS.updates("a"), b"", False) == "ignored"
    assert rig.status()["updates_rejected"] == {"header_limits": 1}


def test_an_unexpected_exception_is_counted_as_internal_and_logged_once_with_its_type(
    tmp_path, monkeypatch, caplog
):
    rig = Rig(tmp_path)

    def broken(state, update):
        raise KeyError("a bug in a strategy")

    monkeypatch.setattr(rig.coordinator.strategy, "check_update", broken)
    with caplog.at_level(logging.WARNING, "ftlct.cloud"):
        for site in "ab":
            assert rig.send(site, rig.update(site, delta(1.0, (0, 0)))) == "rejected:internal"
    full = [r for r in caplog.records if r.exc_info and "KeyError" in r.getMessage()]
    assert len(full) == 1, [r.getMessage() for r in caplog.records]
    status = rig.status()
    assert status["updates_rejected"] == {"internal": 2} and status["updates_this_round"] == []
    assert status["messages"] == {"rejected": 2}
    monkeypatch.undo()
    _good_round(rig)


def test_an_aggregation_failure_leaves_the_round_open_for_the_next_tick(tmp_path, monkeypatch):
    rig = Rig(tmp_path)

    def broken(state, updates):
        raise MemoryError("no room for the deltas")

    monkeypatch.setattr(rig.coordinator.strategy, "aggregate", broken)
    for site in "abc":
        assert rig.send(site, rig.update(site, delta(1.0, (0, 0)))) == "accepted"
    assert rig.store.rounds.completed() == 0 and rig.status()["updates_this_round"] == [
        "a",
        "b",
        "c",
    ]
    monkeypatch.undo()
    rig.coordinator.tick()
    assert rig.store.rounds.completed() == 1
    np.testing.assert_allclose(rig.last_model().weights["dense.0.weight"], np.ones((2, 4)))


def test_the_rejections_table_is_bounded_and_the_counts_stay_exact(tmp_path):
    rig = Rig(tmp_path)
    rig.settings.limits.rejections_kept = 5
    for _ in range(30):
        rig.send("a", b"junk")
    rig.send("a", hostile.nested_header())
    assert rig.status()["updates_rejected"] == {"malformed": 30, "header_limits": 1}
    rows = rig.store.db.execute("SELECT COUNT(*) FROM rejections").fetchone()[0]
    assert rows == 5
    assert rig.status()["messages"] == {"rejected": 31}


def test_a_decoder_panic_is_a_malformed_update_and_a_strategy_panic_an_internal_one(
    tmp_path, monkeypatch
):
    # pyo3 extensions (safetensors among them) raise PanicException, a BaseException
    import ftlct.protocol.messages as messages

    rig = Rig(tmp_path)
    update = rig.update("a", delta(1.0, (0, 0)))

    def panics(body):
        raise PanicException("safetensors panicked")

    monkeypatch.setattr(messages, "load_tensors", panics)
    assert rig.send("a", update) == "rejected:malformed"
    monkeypatch.undo()

    def strategy_panics(state, update):
        raise PanicException("a strategy's extension panicked")

    monkeypatch.setattr(rig.coordinator.strategy, "check_update", strategy_panics)
    assert rig.send("b", rig.update("b", delta(1.0, (0, 0)))) == "rejected:internal"
    monkeypatch.undo()
    assert rig.status()["updates_rejected"] == {"malformed": 1, "internal": 1}
    _good_round(rig)


def test_an_interpreter_exit_is_not_swallowed_as_a_bad_message(tmp_path, monkeypatch):
    import ftlct.protocol.messages as messages

    rig = Rig(tmp_path)

    def interrupted(body):
        raise KeyboardInterrupt

    monkeypatch.setattr(messages, "load_tensors", interrupted)
    with pytest.raises(KeyboardInterrupt):
        rig.send("a", rig.update("a", delta(1.0, (0, 0))))
