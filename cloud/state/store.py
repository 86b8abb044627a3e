"""``StateStore``: the cloud's durable state in ``--state-dir``, one owner per concern.

Every decision the round loop makes is committed before it is acted on (an
update is stored before its MQTT PUBACK; a round's aggregation, the new
global versions and the opening of the next round are one transaction), so a
cloud killed at any point restarts in the same round and completes it once.
Other processes (``ftl-cloud enroll``, ``status``) read and write the same
file; the running cloud sees an enrolment on the next message.

    store.meta         FederationMeta  what the federation is (name, kind, pin, labels)
    store.sites        SiteKeys        enrolled sites and their public keys
    store.models       ModelStore      every global model; the current FederationState
    store.rounds       RoundLog        the rounds, open or done
    store.updates      UpdateStore     accepted updates (deltas until aggregated)
    store.rejections   RejectionLog    refused messages: recent rows, exact counts by reason
    store.counters     Counters        named event counts
    store.twins        TwinTable       the sites' last twin states

The messages received but not yet judged are in ``inbox.sqlite`` beside it
(``inbox.py``: its own file, so receiving never waits for the round loop).
"""

from __future__ import annotations

from pathlib import Path

from ftlct.cloud.state import counters, meta, models, rejections, rounds, site_keys, twins, updates
from ftlct.cloud.state.database import Database

DB_NAME = "cloud.sqlite"
_OWNERS = (meta, site_keys, models, rounds, updates, rejections, counters, twins)


class StateStore:
    def __init__(self, path: Path):
        self.path = path
        db = Database(path)
        for owner in _OWNERS:
            db.create(owner.SCHEMA)
        updates.upgrade(db)
        self._attach(db)
        self.rejections.count_old_rows()

    def _attach(self, db: Database) -> None:
        self.db = db
        self.meta = meta.FederationMeta(self.db)
        self.sites = site_keys.SiteKeys(self.db)
        self.models = models.ModelStore(self.db)
        self.rounds = rounds.RoundLog(self.db)
        self.updates = updates.UpdateStore(self.db)
        self.counters = counters.Counters(self.db)
        self.rejections = rejections.RejectionLog(self.db, self.counters, self.meta)
        self.twins = twins.TwinTable(self.db)

    @classmethod
    def open(cls, state_dir: str | Path) -> StateStore:
        state_dir = Path(state_dir)
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        return cls(state_dir / DB_NAME)

    @classmethod
    def open_existing(cls, state_dir: str | Path) -> StateStore | None:
        """The store in ``state_dir`` if one was ever created there (status must not create one)."""
        path = Path(state_dir) / DB_NAME
        return cls(path) if path.is_file() else None

    @classmethod
    def open_read_only(cls, state_dir: str | Path) -> StateStore | None:
        """A view that never writes (the dashboard, the doctor), or None if there is no state;
        no schema is created, every owner reads as usual."""
        path = Path(state_dir) / DB_NAME
        if not path.is_file():
            return None
        store = cls.__new__(cls)
        store.path = path
        store._attach(Database.read_only(path))
        return store

    def transaction(self):
        """Group writes of several owners into one commit (nests: inner ones are savepoints)."""
        return self.db.transaction()

    def snapshot(self):
        """Read several owners as of one commit (``ftl-cloud status`` while the loop writes)."""
        return self.db.snapshot()

    def close(self) -> None:
        self.db.close()
