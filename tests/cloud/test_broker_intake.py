"""The receive path: durable in the inbox before the PUBACK, judged once, even across a crash."""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import dataclass

from ftlct.cloud.broker_intake import BrokerIntake
from ftlct.cloud.state.inbox import Inbox
from tests.cloud.harness import delta, wait_until
from tests.cloud.test_round_coordinator import TOPICS, Rig


@dataclass
class FakeMessage:  # what paho hands to on_message
    topic: str
    payload: bytes
    mid: int
    qos: int = 1
    retain: bool = False


def test_a_message_is_acknowledged_only_once_it_is_in_the_inbox(tmp_path):
    path = tmp_path / "inbox.sqlite"
    seen_at_ack: list[int] = []

    def ack(mid, qos):
        reader = Inbox(path)  # another connection: only committed rows show
        seen_at_ack.append(reader.count())
        reader.close()

    arrived = threading.Event()
    intake = BrokerIntake(path, ack, arrived)
    intake.start()
    for mid in range(1, 51):
        intake.on_message(None, None, FakeMessage("ftl/f/updates/a", b"x" * mid, mid))
    wait_until(lambda: len(seen_at_ack) == 50, what="50 acks")
    intake.stop()
    assert all(count >= i + 1 for i, count in enumerate(seen_at_ack))
    reader = Inbox(path)
    assert arrived.is_set() and reader.count() == 50 and intake.stored == 50
    assert [len(m.payload) for m in reader.after(0, 100)] == list(range(1, 51))


def test_a_failed_commit_acknowledges_nothing_until_a_retry_succeeds(tmp_path, monkeypatch):
    path = tmp_path / "inbox.sqlite"
    acks: list[int] = []
    failures = iter([sqlite3.OperationalError("disk I/O error")])
    real_append = Inbox.append

    def flaky_append(self, rows):
        failure = next(failures, None)
        if failure is not None:
            raise failure
        real_append(self, rows)

    monkeypatch.setattr(Inbox, "append", flaky_append)
    monkeypatch.setattr("ftlct.cloud.broker_intake.RETRY_S", 0.05)
    intake = BrokerIntake(path, lambda mid, qos: acks.append(mid), threading.Event())
    intake.start()
    intake.on_message(None, None, FakeMessage("ftl/f/updates/a", b"u", 7))
    wait_until(lambda: acks == [7], what="the ack after the retry")
    intake.stop()
    assert Inbox(path).count() == 1


def test_a_full_inbox_holds_back_the_acks_until_the_round_loop_catches_up(tmp_path):
    path = tmp_path / "inbox.sqlite"
    inbox = Inbox(path)
    inbox.append([("ftl/f/updates/a", b"old", False)] * 3)
    acks: list[int] = []
    intake = BrokerIntake(path, lambda mid, qos: acks.append(mid), threading.Event(), max_waiting=3)
    intake.start()
    intake.on_message(None, None, FakeMessage("ftl/f/updates/b", b"new", 9))
    threading.Event().wait(0.5)
    assert acks == []  # back-pressure: the broker keeps the message meanwhile
    inbox.remove_upto(3)
    wait_until(lambda: acks == [9], what="the ack once there is room")
    intake.stop()


def test_ids_never_go_back_even_in_a_recreated_inbox(tmp_path):
    inbox = Inbox(tmp_path / "inbox.sqlite")
    inbox.append([("t", b"1", False), ("t", b"2", False)])
    inbox.remove_upto(2)
    inbox.append([("t", b"3", False)])
    assert [m.id for m in inbox.after(0, 10)] == [3]  # not 1 again
    fresh = Inbox(tmp_path / "other.sqlite")
    fresh.continue_after(41)
    fresh.append([("t", b"x", False)])
    assert [m.id for m in fresh.after(41, 10)] == [42]


def test_messages_judged_before_a_crash_are_not_judged_again(tmp_path):
    rig = Rig(tmp_path)
    inbox = Inbox(tmp_path / "inbox.sqlite")
    inbox.append(
        [(TOPICS.updates(s), rig.update(s, delta(1.0, (0, 0))), False) for s in "ab"]
        + [(TOPICS.updates("a"), b"junk", False)]
    )
    outcomes = rig.coordinator.on_inbox(inbox.after(rig.coordinator.inbox_judged, 10))
    assert outcomes == ["accepted", "accepted", "rejected:malformed"]
    # killed before the judged rows were deleted: the restarted loop skips them
    rig.restart()
    assert rig.coordinator.inbox_judged == 3 and inbox.after(rig.coordinator.inbox_judged, 10) == []
    status = rig.status()
    assert status["messages"] == {"accepted": 2, "rejected": 1}
    assert status["updates_rejected"] == {"malformed": 1}


def test_a_failing_ack_or_batch_does_not_end_the_receive_path(tmp_path, monkeypatch):
    path = tmp_path / "inbox.sqlite"
    acks: list[int] = []

    def ack(mid, qos):
        if mid == 1:
            raise RuntimeError("connection lost")  # paho after a disconnect
        acks.append(mid)

    intake = BrokerIntake(path, ack, threading.Event())
    real_store = BrokerIntake._store
    calls = {"n": 0}

    def store_twice_failing_once(self, inbox, batch):
        calls["n"] += 1
        if calls["n"] == 2:
            raise ValueError("a bug in the receive path")
        real_store(self, inbox, batch)

    monkeypatch.setattr(BrokerIntake, "_store", store_twice_failing_once)
    intake.start()
    intake.on_message(None, None, FakeMessage("t", b"1", 1))
    wait_until(lambda: intake.stored == 1, what="first batch")
    intake.on_message(None, None, FakeMessage("t", b"2", 2))  # this batch fails: no ack
    wait_until(lambda: calls["n"] == 2, what="second batch")
    intake.on_message(None, None, FakeMessage("t", b"3", 3))
    wait_until(lambda: acks == [3], what="third batch acknowledged")
    intake.stop()
    assert [m.payload for m in Inbox(path).after(0, 10)] == [b"1", b"3"]


def test_a_failing_judge_commit_leaves_the_messages_in_the_inbox(tmp_path, monkeypatch):
    from ftlct.cloud import server

    rig = Rig(tmp_path)
    inbox = Inbox(tmp_path / "inbox.sqlite")
    inbox.append([(TOPICS.updates("a"), rig.update("a", delta(1.0, (0, 0))), False)])

    def full_disk(messages):
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(server, "STORE_RETRY_S", 0.0)
    monkeypatch.setattr(rig.coordinator, "on_inbox", full_disk)
    assert server._judge_waiting(rig.coordinator, inbox) is True
    assert inbox.count() == 1 and rig.coordinator.inbox_judged == 0
    monkeypatch.undo()
    assert server._judge_waiting(rig.coordinator, inbox) is True
    assert inbox.count() == 0 and rig.status()["updates_this_round"] == ["a"]
    assert server._judge_waiting(rig.coordinator, inbox) is False


def test_the_inbox_counts_what_it_holds_as_messages_are_judged_and_removed(tmp_path):
    inbox = Inbox(tmp_path / "inbox.sqlite")
    assert inbox.count() == 0
    inbox.append([(f"ftl/F/updates/s{i}", b"x" * 100, False) for i in range(5)])
    inbox.append([("ftl/F/updates/t", b"y", False)])
    assert inbox.count() == 6
    inbox.remove_upto(2)
    assert inbox.count() == 4 and [m.id for m in inbox.after(0, 10)] == [3, 4, 5, 6]
    inbox.remove_upto(6)
    assert inbox.count() == 0
    inbox.close()


def test_judged_rows_are_removed_in_chunks_while_a_backlog_lasts_and_all_once_it_is_judged(
    tmp_path, monkeypatch
):
    from ftlct.cloud import server

    rig = Rig(tmp_path)
    inbox = Inbox(tmp_path / "inbox.sqlite")
    inbox.append([(f"ftl/another/updates/s{i}", b"x", False) for i in range(40)])
    monkeypatch.setattr(server, "REMOVE_EVERY", 20)
    held = []
    while server._judge_waiting(rig.coordinator, inbox, limit=8):
        held.append(inbox.count())
    # 8 and 16 judged: kept; 24: removed; 32 and 40: kept; nothing left to judge: all removed
    assert held == [40, 40, 16, 16, 16]
    assert inbox.count() == 0 and rig.coordinator.inbox_judged == 40
    inbox.append([("ftl/another/updates/t", b"y", False)])
    assert server._judge_waiting(rig.coordinator, inbox, limit=8)  # a short slice: removed at once
    assert inbox.count() == 0 and rig.coordinator.inbox_judged == 41
