"""Group commit: concurrent writes share one COMMIT, fail alone, and are durable when they return."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from ftlct.agent.store.database import Database
from ftlct.agent.store.group_commit import GroupCommit

SCHEMA = "CREATE TABLE IF NOT EXISTS rows (name TEXT PRIMARY KEY);"


@pytest.fixture
def db(tmp_path):
    database = Database(tmp_path / "index.sqlite", schema=SCHEMA)
    yield database
    database.close()


def committed(db: Database) -> set[str]:
    """The rows another connection sees: only what was committed."""
    with sqlite3.connect(db.path) as other:
        return {name for (name,) in other.execute("SELECT name FROM rows")}


def insert(name: str, directory: Path | None = None, fail: bool = False):
    def apply(conn, sync_paths):
        conn.execute("INSERT INTO rows (name) VALUES (?)", (name,))
        if directory is not None:
            sync_paths.add(directory)
        if fail:
            raise OSError(f"{name} cannot be placed")
        return name

    return apply


class Undos:
    def __init__(self):
        self.names: list[str] = []

    def of(self, name: str):
        return lambda: self.names.append(name)


class HeldFirstSync:
    """A directory fsync that holds the first batch until the other writers have queued."""

    def __init__(self, group: GroupCommit, waiting_for: int):
        self.group = group
        self.waiting_for = waiting_for
        self.calls: list[tuple[Path, set[str]]] = []
        self.db = group.db

    def __call__(self, directory: Path) -> None:
        self.calls.append((directory, committed(self.db)))
        if len(self.calls) == 1:
            deadline = threading.Event()
            while len(self.group._queued) < self.waiting_for and not deadline.wait(0.01):
                pass


def run_threads(targets) -> list[threading.Thread]:
    threads = [threading.Thread(target=t) for t in targets]
    for thread in threads:
        thread.start()
    return threads


def test_writes_that_queue_during_a_commit_share_the_next_commit(db, tmp_path):
    group = GroupCommit(db)
    sync = HeldFirstSync(group, waiting_for=5)
    group.sync = sync
    results: dict[str, str] = {}
    undos = Undos()

    def writer(name):
        return lambda: results.__setitem__(name, group.run(insert(name, tmp_path), undos.of(name)))

    first = run_threads([writer("first")])
    while not sync.calls:
        threading.Event().wait(0.01)
    rest = run_threads([writer(f"w{i}") for i in range(5)])
    for thread in first + rest:
        thread.join(timeout=30)
    assert results == {name: name for name in ["first"] + [f"w{i}" for i in range(5)]}
    assert committed(db) == set(results)
    assert (group.batches, group.writes) == (2, 6)  # the five queued behind one COMMIT
    assert undos.names == []


def test_directories_are_synced_once_per_batch_and_before_its_commit(db, tmp_path):
    group = GroupCommit(db)
    sync = HeldFirstSync(group, waiting_for=3)
    group.sync = sync
    a, b = tmp_path / "a", tmp_path / "b"
    lead = run_threads([lambda: group.run(insert("lead", a), lambda: None)])
    while not sync.calls:
        threading.Event().wait(0.01)
    names_dirs = [("x", a), ("y", a), ("z", b)]
    rest = run_threads(
        [lambda n=n, d=d: group.run(insert(n, d), lambda: None) for n, d in names_dirs]
    )
    for thread in lead + rest:
        thread.join(timeout=30)
    second_batch = sync.calls[1:]
    assert sorted(str(d) for d, _ in second_batch) == [str(a), str(b)]  # a once, not twice
    for _, seen in sync.calls:
        assert seen <= {"lead"}  # nothing of a batch was committed when its directories synced
    assert committed(db) == {"lead", "x", "y", "z"}


def test_a_failing_write_fails_alone_and_is_undone(db, tmp_path):
    group = GroupCommit(db)
    sync = HeldFirstSync(group, waiting_for=3)
    group.sync = sync
    undos = Undos()
    outcomes: dict[str, object] = {}

    def writer(name, fail=False):
        def go():
            try:
                outcomes[name] = group.run(insert(name, tmp_path, fail), undos.of(name))
            except OSError as exc:
                outcomes[name] = exc

        return go

    lead = run_threads([writer("lead")])
    while not sync.calls:
        threading.Event().wait(0.01)
    rest = run_threads([writer("ok1"), writer("bad", fail=True), writer("ok2")])
    for thread in lead + rest:
        thread.join(timeout=30)
    assert isinstance(outcomes["bad"], OSError) and "bad cannot be placed" in str(outcomes["bad"])
    assert {k: v for k, v in outcomes.items() if k != "bad"} == {
        "lead": "lead",
        "ok1": "ok1",
        "ok2": "ok2",
    }
    assert committed(db) == {"lead", "ok1", "ok2"}  # its row rolled back to its savepoint
    assert undos.names == ["bad"]


def test_a_batch_whose_commit_fails_fails_every_write_in_it_and_undoes_them(db, tmp_path):
    group = GroupCommit(db)
    undos = Undos()

    def broken_sync(directory):
        raise OSError("directory fsync failed")

    group.sync = broken_sync
    with pytest.raises(OSError, match="directory fsync failed"):
        group.run(insert("one", tmp_path), undos.of("one"))
    assert committed(db) == set()
    assert undos.names == ["one"]
    group.sync = lambda directory: None
    assert group.run(insert("two", tmp_path), undos.of("two")) == "two"  # the next one commits
    assert committed(db) == {"two"}


def test_a_write_failing_before_its_batch_begins_gets_the_error_not_a_silent_none(db, tmp_path):
    group = GroupCommit(db)
    db.close()  # BEGIN itself fails
    with pytest.raises(sqlite3.ProgrammingError):
        group.run(insert("one", tmp_path), lambda: None)
