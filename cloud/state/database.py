"""The cloud's SQLite file: one connection (WAL, ``synchronous = FULL``) the state owners share.

Each owner module (``meta``, ``site_keys``, ``models``, ``rounds``, ``updates``,
``rejections``, ``counters``, ``twins``) declares its own tables and is the
only code that reads or writes them. ``Database.transaction()`` nests: the
outermost one is ``BEGIN IMMEDIATE`` ... ``COMMIT``, inner ones are savepoints,
so a caller can group several owners' writes into one commit.
``Database.snapshot()`` is the readers' counterpart: several reads that see
one committed state (one WAL snapshot), whatever commits in between.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class Database:
    def __init__(self, path: Path):
        self.path = path
        self.connection = sqlite3.connect(path, timeout=30.0, isolation_level=None)
        self.connection.execute("PRAGMA busy_timeout = 30000")
        self.connection.execute("PRAGMA journal_mode = WAL")
        self.connection.execute("PRAGMA synchronous = FULL")
        self._depth = 0

    @classmethod
    def read_only(cls, path: Path) -> Database:
        """A connection that cannot write (``mode=ro``, ``query_only``), for other readers;
        usable from any thread (the dashboard opens one per request)."""
        database = cls.__new__(cls)
        database.path = path
        database.connection = sqlite3.connect(
            f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=5.0, check_same_thread=False
        )
        database.connection.execute("PRAGMA query_only = ON")
        database._depth = 0
        return database

    def create(self, schema: str) -> None:
        self.connection.executescript(schema)

    def execute(self, sql: str, parameters=()) -> sqlite3.Cursor:
        return self.connection.execute(sql, parameters)

    def executemany(self, sql: str, rows) -> sqlite3.Cursor:
        return self.connection.executemany(sql, rows)

    def transaction(self) -> _Transaction:
        return _Transaction(self)

    @contextmanager
    def snapshot(self) -> Iterator[Database]:
        """Reads inside see one committed state: a deferred ``BEGIN`` takes the WAL snapshot at
        the first read and keeps it to the end. Inside a transaction already, that one is it."""
        if self._depth or self.connection.in_transaction:
            yield self
            return
        self.execute("BEGIN")
        try:
            yield self
        finally:
            if self.connection.in_transaction:
                self.execute("ROLLBACK")  # a read-only view: there is nothing to keep

    def close(self) -> None:
        self.connection.close()


class _Transaction:
    def __init__(self, database: Database):
        self.database = database
        self.savepoint = ""

    def __enter__(self) -> Database:
        database = self.database
        if database._depth == 0:
            database.execute("BEGIN IMMEDIATE")
        else:
            self.savepoint = f"nested_{database._depth}"
            database.execute(f"SAVEPOINT {self.savepoint}")
        database._depth += 1
        return database

    def __exit__(self, exc_type, exc, tb):
        database = self.database
        database._depth -= 1
        if not self.savepoint:
            if exc_type:
                database.execute("ROLLBACK")
                return False
            try:
                database.execute("COMMIT")
            except sqlite3.Error:
                if database.connection.in_transaction:  # e.g. disk full: leave no half-open write
                    database.execute("ROLLBACK")
                raise
        elif exc_type:
            database.execute(f"ROLLBACK TO {self.savepoint}")
            database.execute(f"RELEASE {self.savepoint}")
        else:
            database.execute(f"RELEASE {self.savepoint}")
        return False
