"""``updates``: the accepted site updates, one per (round, site), deltas kept until aggregation.

A delta is kept as it travelled: the update's signed safetensors body in its
wire dtype (fp16 is half of fp32's bytes) with its codec (``delta_codec``),
so accepting an update encodes nothing, and it is decoded, as it was when it
was checked, when the round aggregates. Rows of an older cloud have no codec:
their delta is float32 safetensors.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from ftlct.cloud.state.database import Database
from ftlct.cloud.state.models import blob_to_weights, weights_to_blob
from ftlct.cloud.strategies import SiteUpdate
from ftlct.protocol.codecs import decode_delta
from ftlct.protocol.messages import body_to_tensors

SCHEMA = """
CREATE TABLE IF NOT EXISTS updates (
    round INTEGER NOT NULL, site TEXT NOT NULL, update_id TEXT NOT NULL UNIQUE,
    cluster TEXT NOT NULL, base_version TEXT NOT NULL, n_samples INTEGER NOT NULL,
    metrics TEXT NOT NULL, norm REAL NOT NULL, delta BLOB, received_at REAL NOT NULL,
    delta_codec TEXT, PRIMARY KEY (round, site));
"""
_COLUMNS = (
    "round, site, update_id, cluster, base_version, n_samples, metrics, norm, delta, "
    "received_at, delta_codec"
)
# the columns StoredUpdates._update reads, in its order
_SELECT_DELTAS = "SELECT site, delta, n_samples, cluster, delta_codec FROM updates"


def upgrade(db: Database) -> None:
    """Add ``delta_codec`` to a table an older cloud created (its rows keep NULL: float32)."""
    columns = {row[1] for row in db.execute("PRAGMA table_info(updates)")}
    if "delta_codec" not in columns:
        db.execute("ALTER TABLE updates ADD COLUMN delta_codec TEXT")


def _decoded(blob: bytes, codec: str | None) -> dict[str, np.ndarray]:
    if codec is None:  # written by an older cloud: float32 safetensors
        return blob_to_weights(blob)
    spec = json.loads(codec)
    return decode_delta(body_to_tensors(blob), spec["codec"], spec["params"])


@dataclass(frozen=True)
class StoredUpdate:
    round: int
    site: str
    update_id: str
    cluster: str
    base_version: str


class UpdateStore:
    def __init__(self, db: Database):
        self.db = db

    def add(self, round_: int, message, norm: float) -> bool:
        """Store ``message``; False (nothing stored) if its update_id, or an update of its site
        for ``round_``, is stored already: the caller asks ``find`` / ``of`` which it was."""
        body = getattr(message, "body", b"")  # set by open_update; absent from hand-made ones
        if body:  # as received: no re-encoding, and fp16 stays half the size
            delta = body
            codec = json.dumps({"codec": message.codec, "params": message.codec_params})
        else:
            delta, codec = weights_to_blob(message.delta), None
        cursor = self.db.execute(
            f"INSERT INTO updates ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT DO NOTHING",
            (
                round_,
                message.site,
                message.update_id,
                message.cluster,
                message.base_version,
                message.n_samples,
                json.dumps(message.metrics),
                norm,
                delta,
                time.time(),
                codec,
            ),
        )
        return cursor.rowcount == 1

    def find(self, update_id: str) -> StoredUpdate | None:
        row = self.db.execute(
            "SELECT round, site, update_id, cluster, base_version FROM updates WHERE update_id = ?",
            (update_id,),
        ).fetchone()
        return StoredUpdate(*row) if row else None

    def of(self, round_: int, site: str) -> StoredUpdate | None:
        row = self.db.execute(
            "SELECT round, site, update_id, cluster, base_version FROM updates "
            "WHERE round = ? AND site = ?",
            (round_, site),
        ).fetchone()
        return StoredUpdate(*row) if row else None

    def sites_of_round(self, round_: int) -> list[str]:
        rows = self.db.execute("SELECT site FROM updates WHERE round = ? ORDER BY site", (round_,))
        return [r[0] for r in rows]

    def records_of_round(self, round_: int) -> list[dict]:
        """Site, cluster, sample count and local metrics of each update of ``round_`` (no delta)."""
        rows = self.db.execute(
            "SELECT site, cluster, n_samples, metrics FROM updates WHERE round = ? ORDER BY site",
            (round_,),
        )
        return [
            {"site": r[0], "cluster": r[1], "n_samples": r[2], "metrics": json.loads(r[3])}
            for r in rows
        ]

    def count_of_round(self, round_: int) -> int:
        return self.db.execute(
            "SELECT COUNT(*) FROM updates WHERE round = ?", (round_,)
        ).fetchone()[0]

    def clusters_of_round(self, round_: int) -> set[str]:
        rows = self.db.execute("SELECT DISTINCT cluster FROM updates WHERE round = ?", (round_,))
        return {r[0] for r in rows}

    def claims_of_round(self, round_: int) -> dict[str, dict[str, int]]:
        """cluster -> site -> the n_samples each update of the round claimed."""
        claims: dict[str, dict[str, int]] = {}
        rows = self.db.execute(
            "SELECT cluster, site, n_samples FROM updates WHERE round = ?", (round_,)
        )
        for cluster, site, n_samples in rows:
            claims.setdefault(cluster, {})[site] = int(n_samples)
        return claims

    def of_round(self, round_: int, weights: dict[str, float] | None = None) -> StoredUpdates:
        """The round's updates; ``weights`` (site -> weight) replaces the claimed n_samples."""
        return StoredUpdates(self.db, round_, weights)

    def drop_deltas(self, round_: int) -> None:
        """The deltas served their purpose; the metadata stays as the round's record."""
        self.db.execute("UPDATE updates SET delta = NULL WHERE round = ?", (round_,))


class StoredUpdates(Sequence):
    """A round's updates as ``SiteUpdate``s, decoded one at a time (FedAvg stays O(model));
    iterating reads them all with one query, in site order."""

    def __init__(self, db: Database, round_: int, weights: dict[str, float] | None = None):
        self._db = db
        self._round = round_
        self._weights = weights
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
            f"{_SELECT_DELTAS} WHERE round = ? AND site = ?",
            (self._round, site),
        ).fetchone()
        return self._update(row)

    def __iter__(self) -> Iterator[SiteUpdate]:
        rows = self._db.execute(
            f"{_SELECT_DELTAS} WHERE round = ? AND delta IS NOT NULL ORDER BY site",
            (self._round,),
        )
        for row in rows:
            yield self._update(row)

    def _update(self, row: sqlite3.Row | tuple) -> SiteUpdate:
        site, blob, n_samples, cluster, codec = row
        weight = int(n_samples) if self._weights is None else self._weights[site]
        return SiteUpdate(site, _decoded(blob, codec), weight, cluster)
