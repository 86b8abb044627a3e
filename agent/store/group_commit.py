"""Group commit: writers on concurrent associations share one transaction and one COMMIT.

Before its success status may go back, a stored instance needs its file, the
directory entry naming it, and its index row on disk, the row last. Done one
after the other that is three journal commits of the file system for each
instance. Here the first writer to arrive leads: it takes every write queued
so far, applies each inside its own SAVEPOINT (one failing write does not
undo the others), fsyncs the files and directories the batch named *at once*
(ext4 folds concurrent fsyncs into one journal commit: a file and its
directory synced together cost ~2 ms on this disk, one after the other ~8 ms,
under load), then commits once and wakes the others. Nobody waits for a batch
to fill: the writes that queue up while a COMMIT is on its way to the disk
form the next batch, so one association alone gets the overlapped fsyncs and
several also share the COMMIT.

Every writer returns only after the COMMIT that holds its row is durable, and
that COMMIT comes only after every file and directory of its batch was synced.
A file renamed into place before its fsync and lost in a crash is not
acknowledged, and its content-derived name no longer matches it
(``InstanceStore.recover`` drops it).
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ftlct.agent.store.database import Database
from ftlct.export.files import fsync_dir as fsync_path  # read-only open + fsync: files too

MAX_PARALLEL_SYNCS = 8


@dataclass(eq=False)  # a write is itself, whatever its fields
class Write:
    """One writer's part of a batch.

    ``apply(conn, sync_paths)`` runs inside the shared transaction and returns its result;
    it adds to ``sync_paths`` each file it wrote and each directory whose entries it changed
    (all synced, together, before the COMMIT).
    ``undo()`` takes back what ``apply`` did outside SQLite (a file it renamed into place)
    when its rows do not commit; it must tolerate being called when ``apply`` did nothing.
    """

    apply: Callable[[sqlite3.Connection, set[Path]], Any]
    undo: Callable[[], None]
    result: Any = None
    error: BaseException | None = None
    done: bool = False
    sync_paths: set[Path] = field(default_factory=set)


class GroupCommit:
    def __init__(self, db: Database, sync: Callable[[Path], None] = fsync_path):
        self.db = db
        self.sync = sync
        self._syncers = ThreadPoolExecutor(MAX_PARALLEL_SYNCS, thread_name_prefix="fsync")
        self._cond = threading.Condition()
        self._queued: list[Write] = []
        self._leading = False
        self.batches = 0  # COMMITs made (a write alone is a batch of one)
        self.writes = 0

    def run(
        self,
        apply: Callable[[sqlite3.Connection, set[Path]], Any],
        undo: Callable[[], None],
    ) -> Any:
        """Apply one write in the next group commit; its result once durable, or its error."""
        write = Write(apply, undo)
        with self._cond:
            self._queued.append(write)
            while not write.done and self._leading:
                self._cond.wait()
            if not write.done:  # nobody leads: this writer commits everything queued
                self._leading = True
                batch, self._queued = self._queued, []
        if not write.done:
            try:
                self._commit(batch)
            finally:
                with self._cond:
                    self._leading = False
                    self._cond.notify_all()
        if write.error is not None:
            raise write.error
        return write.result

    def _commit(self, batch: list[Write]) -> None:
        applied: list[Write] = []
        try:
            with self.db.transaction() as conn:
                for write in batch:
                    if self._apply_one(conn, write):
                        applied.append(write)
                paths = set().union(*(w.sync_paths for w in applied))
                # All at once (fsync releases the GIL); list() re-raises the first failure.
                list(self._syncers.map(self.sync, paths))
        except BaseException as exc:  # nothing of the batch committed
            for write in batch:
                if write in applied:
                    _undo(write)
                if write.error is None or write in applied:
                    write.error = exc
        finally:
            self.batches += 1
            self.writes += len(batch)
            for write in batch:
                write.done = True

    @staticmethod
    def _apply_one(conn: sqlite3.Connection, write: Write) -> bool:
        conn.execute("SAVEPOINT write")
        try:
            write.result = write.apply(conn, write.sync_paths)
        except BaseException as exc:
            conn.execute("ROLLBACK TO write")
            conn.execute("RELEASE write")
            write.error = exc
            _undo(write)
            return False
        conn.execute("RELEASE write")
        return True


def _undo(write: Write) -> None:
    # What an undo cannot remove is a file the index does not name: recover() drops it.
    with contextlib.suppress(OSError):
        write.undo()
