"""The cloud's durable state: one SQLite database (WAL) in ``--state-dir``.

Every decision the round loop makes is committed here before it is acted on
(an update is stored before its MQTT PUBACK; a round's aggregation, the new
global versions and the opening of the next round are one transaction), so a
cloud killed at any point restarts in the same round and completes it once.
Other processes (``ftl-cloud enroll``, ``status``) read and write the same
file; the running cloud sees an enrolment on the next message.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors.numpy import load as load_tensors
from safetensors.numpy import save as save_tensors

from ftlct.cloud.strategies import FederationState, SiteUpdate

DB_NAME = "cloud.sqlite"

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS sites (
    site TEXT PRIMARY KEY, public_key TEXT NOT NULL, enrolled_at REAL NOT NULL, via TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS models (
    cluster TEXT NOT NULL, version TEXT NOT NULL, round INTEGER NOT NULL, base_version TEXT,
    weights BLOB NOT NULL, created_at REAL NOT NULL, PRIMARY KEY (cluster, version));
CREATE TABLE IF NOT EXISTS federation (
    id INTEGER PRIMARY KEY CHECK (id = 1), round INTEGER NOT NULL, versions TEXT NOT NULL,
    membership TEXT NOT NULL, extra TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS rounds (
    round INTEGER PRIMARY KEY, status TEXT NOT NULL, strategy TEXT NOT NULL,
    opened_at REAL NOT NULL, deadline REAL NOT NULL, extensions INTEGER NOT NULL DEFAULT 0,
    base_versions TEXT NOT NULL, assignments TEXT NOT NULL, default_cluster TEXT NOT NULL,
    closed_at REAL, n_updates INTEGER);
CREATE TABLE IF NOT EXISTS updates (
    round INTEGER NOT NULL, site TEXT NOT NULL, update_id TEXT NOT NULL UNIQUE,
    cluster TEXT NOT NULL, base_version TEXT NOT NULL, n_samples INTEGER NOT NULL,
    metrics TEXT NOT NULL, norm REAL NOT NULL, delta BLOB, received_at REAL NOT NULL,
    PRIMARY KEY (round, site));
CREATE TABLE IF NOT EXISTS rejections (
    id INTEGER PRIMARY KEY, at REAL NOT NULL, round INTEGER, site TEXT,
    reason TEXT NOT NULL, detail TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS twins (
    site TEXT PRIMARY KEY, state TEXT NOT NULL, status TEXT NOT NULL, online INTEGER NOT NULL,
    model_version TEXT NOT NULL, last_seen REAL NOT NULL);
"""


def weights_to_blob(weights: dict[str, np.ndarray]) -> bytes:
    return save_tensors({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in weights.items()})


def blob_to_weights(blob: bytes) -> dict[str, np.ndarray]:
    return load_tensors(blob)


@dataclass(frozen=True)
class RoundRow:
    round: int
    status: str  # "open" | "done"
    strategy: str
    opened_at: float
    deadline: float
    extensions: int
    base_versions: dict[str, str]
    assignments: dict[str, str]
    default_cluster: str
    closed_at: float | None
    n_updates: int | None

    def cluster_for(self, site: str) -> str:
        return self.assignments.get(site, self.default_cluster)


@dataclass(frozen=True)
class StoredUpdate:
    round: int
    site: str
    update_id: str
    cluster: str
    base_version: str


class StateStore:
    """Thin typed access to the database; each public write is one transaction."""

    def __init__(self, path: Path):
        self.path = path
        self.db = sqlite3.connect(path, timeout=30.0, isolation_level=None)
        self.db.execute("PRAGMA busy_timeout = 30000")
        self.db.execute("PRAGMA journal_mode = WAL")
        self.db.execute("PRAGMA synchronous = FULL")
        self.db.executescript(SCHEMA)

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

    def close(self) -> None:
        self.db.close()

    def transaction(self):
        return _Transaction(self.db)

    # ------------------------------------------------------------ meta + counters
    def meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    def bump(self, name: str, by: int = 1) -> None:
        self.db.execute(
            "INSERT INTO counters VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET value = value + ?",
            (name, by, by),
        )

    def counters(self) -> dict[str, int]:
        return dict(self.db.execute("SELECT name, value FROM counters").fetchall())

    # ------------------------------------------------------------ enrolment
    def enroll(self, site: str, public_key: str, via: str = "enroll") -> str | None:
        """Store ``site``'s key; returns the key it replaces (None if new)."""
        with self.transaction():
            old = self.public_key(site)
            self.db.execute(
                "INSERT OR REPLACE INTO sites VALUES (?, ?, ?, ?)",
                (site, public_key, time.time(), via),
            )
        return old

    def public_key(self, site: str) -> str | None:
        row = self.db.execute("SELECT public_key FROM sites WHERE site = ?", (site,)).fetchone()
        return row[0] if row else None

    def enrolled_sites(self) -> dict[str, str]:
        return dict(self.db.execute("SELECT site, public_key FROM sites").fetchall())

    # ------------------------------------------------------------ models + federation state
    def add_model(
        self, cluster: str, version: str, round_: int, base_version: str | None, weights
    ) -> None:
        self.db.execute(
            "INSERT INTO models VALUES (?, ?, ?, ?, ?, ?)",
            (cluster, version, round_, base_version, weights_to_blob(weights), time.time()),
        )

    def model_weights(self, cluster: str, version: str) -> dict[str, np.ndarray]:
        row = self.db.execute(
            "SELECT weights FROM models WHERE cluster = ? AND version = ?", (cluster, version)
        ).fetchone()
        if row is None:
            raise KeyError(f"no model {cluster}/{version}")
        return blob_to_weights(row[0])

    def model_row(self, cluster: str, version: str) -> tuple[int, str | None]:
        row = self.db.execute(
            "SELECT round, base_version FROM models WHERE cluster = ? AND version = ?",
            (cluster, version),
        ).fetchone()
        return int(row[0]), row[1]

    def count_models_of_round(self, round_: int) -> int:
        return self.db.execute("SELECT COUNT(*) FROM models WHERE round = ?", (round_,)).fetchone()[
            0
        ]

    def save_federation(
        self, state_round: int, versions: dict, membership: dict, extra: dict
    ) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO federation VALUES (1, ?, ?, ?, ?)",
            (state_round, json.dumps(versions), json.dumps(membership), json.dumps(extra)),
        )

    def current_versions(self) -> dict[str, str]:
        row = self.db.execute("SELECT versions FROM federation WHERE id = 1").fetchone()
        return json.loads(row[0]) if row else {}

    def federation_state(self) -> tuple[FederationState, dict[str, str]] | None:
        """``(state with current weights, cluster -> version)``; None before initialisation."""
        row = self.db.execute(
            "SELECT round, versions, membership, extra FROM federation WHERE id = 1"
        ).fetchone()
        if row is None:
            return None
        versions = json.loads(row[1])
        models = {c: self.model_weights(c, v) for c, v in versions.items()}
        state = FederationState(models, json.loads(row[2]), int(row[0]), json.loads(row[3]))
        return state, versions

    # ------------------------------------------------------------ rounds
    def add_round(self, row: RoundRow) -> None:
        self.db.execute(
            "INSERT INTO rounds VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                row.round,
                row.status,
                row.strategy,
                row.opened_at,
                row.deadline,
                row.extensions,
                json.dumps(row.base_versions),
                json.dumps(row.assignments),
                row.default_cluster,
                row.closed_at,
                row.n_updates,
            ),
        )

    def last_round(self) -> RoundRow | None:
        row = self.db.execute("SELECT * FROM rounds ORDER BY round DESC LIMIT 1").fetchone()
        return _round_row(row) if row else None

    def rounds_completed(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM rounds WHERE status = 'done'").fetchone()[0]

    def extend_round(self, round_: int, deadline: float) -> None:
        self.db.execute(
            "UPDATE rounds SET deadline = ?, extensions = extensions + 1 WHERE round = ?",
            (deadline, round_),
        )

    def close_round(self, round_: int, n_updates: int) -> None:
        cursor = self.db.execute(
            "UPDATE rounds SET status = 'done', closed_at = ?, n_updates = ? "
            "WHERE round = ? AND status = 'open'",
            (time.time(), n_updates, round_),
        )
        if cursor.rowcount != 1:
            raise RuntimeError(f"round {round_} is not open; refusing to close it twice")
        # the deltas served their purpose; keep the metadata as the round's record
        self.db.execute("UPDATE updates SET delta = NULL WHERE round = ?", (round_,))

    # ------------------------------------------------------------ updates
    def add_update(self, round_: int, message, norm: float) -> None:
        self.db.execute(
            "INSERT INTO updates VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                round_,
                message.site,
                message.update_id,
                message.cluster,
                message.base_version,
                message.n_samples,
                json.dumps(message.metrics),
                norm,
                weights_to_blob(message.delta),
                time.time(),
            ),
        )

    def find_update(self, update_id: str) -> StoredUpdate | None:
        row = self.db.execute(
            "SELECT round, site, update_id, cluster, base_version FROM updates WHERE update_id = ?",
            (update_id,),
        ).fetchone()
        return StoredUpdate(*row) if row else None

    def update_of(self, round_: int, site: str) -> StoredUpdate | None:
        row = self.db.execute(
            "SELECT round, site, update_id, cluster, base_version FROM updates "
            "WHERE round = ? AND site = ?",
            (round_, site),
        ).fetchone()
        return StoredUpdate(*row) if row else None

    def sites_of_round(self, round_: int) -> list[str]:
        rows = self.db.execute("SELECT site FROM updates WHERE round = ? ORDER BY site", (round_,))
        return [r[0] for r in rows]

    def clusters_of_round(self, round_: int) -> set[str]:
        rows = self.db.execute("SELECT DISTINCT cluster FROM updates WHERE round = ?", (round_,))
        return {r[0] for r in rows}

    def updates_of_round(self, round_: int) -> StoredUpdates:
        return StoredUpdates(self.db, round_)

    # ------------------------------------------------------------ rejections
    def reject(self, round_: int | None, site: str | None, reason: str, detail: str) -> None:
        self.db.execute(
            "INSERT INTO rejections (at, round, site, reason, detail) VALUES (?, ?, ?, ?, ?)",
            (time.time(), round_, site, reason, detail[:500]),
        )

    def rejection_counts(self) -> dict[str, int]:
        rows = self.db.execute("SELECT reason, COUNT(*) FROM rejections GROUP BY reason")
        return dict(rows.fetchall())

    # ------------------------------------------------------------ twins
    def save_twin(
        self, site: str, state: dict, status: str, online: bool, model_version: str, seen: float
    ) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO twins VALUES (?, ?, ?, ?, ?, ?)",
            (site, json.dumps(state), status, int(online), model_version, seen),
        )

    def touch_twin(self, site: str) -> None:
        """A sign of life other than a twin message (an accepted update)."""
        self.db.execute("UPDATE twins SET last_seen = ? WHERE site = ?", (time.time(), site))

    def twins(self) -> dict[str, dict]:
        rows = self.db.execute(
            "SELECT site, state, status, online, model_version, last_seen FROM twins"
        )
        return {
            r[0]: {
                "state": json.loads(r[1]),
                "status": r[2],
                "online": bool(r[3]),
                "model_version": r[4],
                "last_seen": r[5],
            }
            for r in rows
        }


class StoredUpdates(Sequence):
    """A round's updates as ``SiteUpdate``s, decoded one at a time (FedAvg stays O(model))."""

    def __init__(self, db: sqlite3.Connection, round_: int):
        self._db = db
        self._round = round_
        self._sites = [
            r[0]
            for r in db.execute(
                "SELECT site FROM updates WHERE round = ? AND delta IS NOT NULL ORDER BY site",
                (round_,),
            )
        ]

    def __len__(self) -> int:
        return len(self._sites)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        site = self._sites[index]
        row = self._db.execute(
            "SELECT site, delta, n_samples, cluster FROM updates WHERE round = ? AND site = ?",
            (self._round, site),
        ).fetchone()
        return SiteUpdate(row[0], blob_to_weights(row[1]), int(row[2]), row[3])

    def __iter__(self) -> Iterator[SiteUpdate]:
        for index in range(len(self)):
            yield self[index]


class _Transaction:
    def __init__(self, db: sqlite3.Connection):
        self.db = db

    def __enter__(self):
        self.db.execute("BEGIN IMMEDIATE")
        return self.db

    def __exit__(self, exc_type, exc, tb):
        self.db.execute("ROLLBACK" if exc_type else "COMMIT")
        return False


def _round_row(row) -> RoundRow:
    return RoundRow(
        round=row[0],
        status=row[1],
        strategy=row[2],
        opened_at=row[3],
        deadline=row[4],
        extensions=row[5],
        base_versions=json.loads(row[6]),
        assignments=json.loads(row[7]),
        default_cluster=row[8],
        closed_at=row[9],
        n_updates=row[10],
    )
