"""The agent's SQLite databases (WAL): one connection per file and process, under a lock.

Write transactions also hold an exclusive ``flock`` on ``<file>.lock`` from before
``BEGIN`` to after ``COMMIT``: receive worker processes (``dicom/receive_workers.py``)
commit to the same index as the serve process, and a writer that finds SQLite's
write lock taken polls for it (SQLite's busy handler sleeps 1, 2, 5, 10 ... ms),
while one waiting on the flock is woken by the kernel the moment the COMMIT before
it is done (measured: README "Performance"). Read-only handles never open the file.

Every stage keeps its durable state here, so a restart resumes where the
process stopped. Each table belongs to one owner module, which holds its
schema and creates it with ``Database.ensure`` (instances: ``store.instance_index``,
series: ``series.series_index``, jobs: ``series.jobs``, results:
``inference.results``, ...; README "Who owns what"); this module owns only
``meta``, a key-value table written through ``set_meta``.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
"""


class Database:
    """A thread-safe handle on ``index.sqlite``; writes go through ``transaction()``."""

    def __init__(
        self, path: str | Path, create: bool = True, schema: str = SCHEMA, begin: str = "IMMEDIATE"
    ):
        self.path = Path(path)
        # IMMEDIATE takes the write lock up front (no upgrade deadlocks between writers);
        # it also locks every ATTACHed file, so a handle that only reads its attachments
        # uses DEFERRED to leave their writers alone.
        self._begin = f"BEGIN {begin}"
        if not create and not self.path.is_file():
            raise FileNotFoundError(f"no agent index at {self.path}")
        self._lock = threading.RLock()
        self._conn = sqlite3.connect(
            self.path, check_same_thread=False, isolation_level=None, timeout=30.0
        )
        self._conn.row_factory = sqlite3.Row
        self._conn.execute("PRAGMA busy_timeout = 30000")
        if create:
            self._conn.execute("PRAGMA journal_mode = WAL")
            self.ensure(schema)
        # FULL: a commit is on disk before we acknowledge the instance it records.
        self._conn.execute("PRAGMA synchronous = FULL")
        self._reader: sqlite3.Connection | None = None  # committed reads, opened when first used
        self._reader_lock = threading.Lock()
        self._writers_lock: int | None = None  # the flock's descriptor, opened by the first write

    def attach(self, path: str | Path, alias: str) -> None:
        """Make another database file's tables readable as ``alias.table`` on this handle."""
        with self._lock:
            self._conn.execute("ATTACH DATABASE ? AS " + alias, (str(path),))

    def ensure(self, ddl: str) -> None:
        """Create tables and indexes (idempotent ``CREATE ... IF NOT EXISTS`` script).

        Refused inside a transaction: ``executescript`` would commit it half done.
        """
        with self._lock:
            if self._conn.in_transaction:
                raise RuntimeError("schema changes inside a transaction would commit it")
            self._conn.executescript(ddl)

    def adopt(self, schema: str, table: str, create: bool) -> bool:
        """An owner opening its tables: create ``schema`` (``create``), or only report whether
        its ``table`` exists (a reader, e.g. ``ftl-agent status``, never writes); True if it does."""
        if create:
            self.ensure(schema)
            return True
        return self.has_table(table)

    def tally(self, sql: str, keys: tuple[str, ...] = ()) -> dict[str, int]:
        """``{key: count}`` from ``SELECT key, COUNT(*) ... GROUP BY key``; ``keys`` read 0
        when absent, so a report always names them."""
        found = {row[0]: int(row[1]) for row in self.query(sql)}
        return dict.fromkeys(keys, 0) | found

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """``BEGIN`` ... ``COMMIT`` under the lock; rolls back on any exception."""
        with self._lock:
            writers = self._writers_flock()
            fcntl.flock(writers, fcntl.LOCK_EX)  # waits without holding the GIL
            try:
                self._conn.execute(self._begin)
                try:
                    yield self._conn
                except BaseException:
                    self._conn.execute("ROLLBACK")
                    raise
                self._conn.execute("COMMIT")
            finally:
                fcntl.flock(writers, fcntl.LOCK_UN)

    def _writers_flock(self) -> int:
        """The descriptor of ``<file>.lock`` (owner-only, like the database), under ``_lock``."""
        if self._writers_lock is None:
            self._writers_lock = os.open(
                f"{self.path}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600
            )
        return self._writers_lock

    def query(self, sql: str, params: tuple | dict = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._conn.execute(sql, params).fetchall()

    def query_one(self, sql: str, params: tuple | dict = ()) -> sqlite3.Row | None:
        with self._lock:
            return self._conn.execute(sql, params).fetchone()

    def query_one_committed(self, sql: str, params: tuple | dict = ()) -> sqlite3.Row | None:
        """``query_one`` on a second, read-only connection: what the last COMMIT holds, read
        without waiting for a writer that holds the lock through its fsyncs and COMMIT (WAL
        readers never block on the writer). Never sees a transaction still in progress, even
        the caller's own."""
        with self._reader_lock:
            if self._reader is None:
                reader = sqlite3.connect(
                    self.path, check_same_thread=False, isolation_level=None, timeout=30.0
                )
                reader.row_factory = sqlite3.Row
                reader.execute("PRAGMA query_only = ON")
                self._reader = reader
            return self._reader.execute(sql, params).fetchone()

    def scalar(self, sql: str, params: tuple | dict = ()) -> Any:
        row = self.query_one(sql, params)
        return None if row is None else row[0]

    def has_table(self, name: str) -> bool:
        return bool(
            self.scalar("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (name,))
        )

    def get_meta(self, key: str) -> str | None:
        return self.scalar("SELECT value FROM meta WHERE key = ?", (key,))

    def set_meta(self, key: str, value: str) -> None:
        self.set_meta_many({key: value})

    def set_meta_many(self, values: dict[str, str]) -> None:
        """Set several keys in one transaction (readers see all of them or none)."""
        with self.transaction() as conn:
            conn.executemany(
                "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", list(values.items())
            )

    def close(self) -> None:
        with self._lock:
            self._conn.close()
            if self._writers_lock is not None:
                os.close(self._writers_lock)
                self._writers_lock = None
        with self._reader_lock:
            if self._reader is not None:
                self._reader.close()
                self._reader = None
