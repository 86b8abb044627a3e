"""Per-slice embeddings, kept: they are the training set of local fine-tuning (issue 5).

``embeddings.sqlite`` in the data dir holds one row per (SOP Instance, frame,
backbone sha256, instance sha256) with the vector as a float32 little-endian
blob. Keying on the backbone hash means a backbone change never mixes feature
spaces; keying on the instance's own hash means a replaced instance (same UID,
new bytes) never serves its predecessor's embedding.

Training reads them with::

    keys, vectors = load_embeddings(data_dir, backbone_sha256)
    # keys.sop_instance_uids[i], keys.series_uids[i], keys.study_uids[i], keys.frames[i]
    # describe vectors[i] (float32 [N, D]); join labels on whichever UID level they use.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ftlct.agent.store.database import Database
from ftlct.agent.store.instance_index import InstanceIndex
from ftlct.agent.store.layout import DataDir

SCHEMA = """
CREATE TABLE IF NOT EXISTS embeddings (
    sop_instance_uid TEXT NOT NULL,
    frame INTEGER NOT NULL,
    backbone_sha256 TEXT NOT NULL,
    instance_sha256 TEXT NOT NULL,
    series_uid TEXT NOT NULL,
    study_uid TEXT NOT NULL,
    dim INTEGER NOT NULL,
    vector BLOB NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (sop_instance_uid, frame, backbone_sha256, instance_sha256)
);
CREATE INDEX IF NOT EXISTS embeddings_series ON embeddings (series_uid, backbone_sha256);
-- the twin's feature statistics read the most recent rows of one backbone
CREATE INDEX IF NOT EXISTS embeddings_recent ON embeddings (backbone_sha256, created_at);

-- Instances without usable pixels (no pixel data, undecodable): not retried for these bytes.
CREATE TABLE IF NOT EXISTS unembeddable (
    sop_instance_uid TEXT NOT NULL,
    instance_sha256 TEXT NOT NULL,
    reason TEXT NOT NULL,
    PRIMARY KEY (sop_instance_uid, instance_sha256)
);
"""


@dataclass(frozen=True)
class EmbeddingKeys:
    """What each row of the embedding matrix belongs to, at every UID level."""

    sop_instance_uids: list[str]
    series_uids: list[str]
    study_uids: list[str]
    frames: list[int]

    def __len__(self) -> int:
        return len(self.sop_instance_uids)


class EmbeddingStore:
    def __init__(self, data_dir: DataDir, clock=time.time):
        # The only writer of embeddings.sqlite: DEFERRED, so that reading the attached index
        # never locks out the store's writes to it.
        self.db = Database(data_dir.embeddings, schema=SCHEMA, begin="DEFERRED")
        # Read the index's current_instances view beside it, so only the current copy of
        # each instance counts (store.instance_index publishes the view).
        self.db.attach(data_dir.index, "idx")
        self.clock = clock

    def put_many(self, items: list[tuple[dict, np.ndarray]], backbone_sha256: str) -> None:
        """Store ``(instance row, vectors [frames, D])`` pairs in one transaction."""
        now = self.clock()
        rows = []
        for instance, vectors in items:
            vectors = np.ascontiguousarray(vectors, dtype="<f4")
            rows += [
                (
                    instance["sop_instance_uid"],
                    frame,
                    backbone_sha256,
                    instance["sha256"],
                    instance["series_uid"],
                    instance["study_uid"],
                    vectors.shape[1],
                    vectors[frame].tobytes(),
                    now,
                )
                for frame in range(len(vectors))
            ]
        with self.db.transaction() as conn:
            conn.executemany(
                "INSERT OR REPLACE INTO embeddings (sop_instance_uid, frame, backbone_sha256,"
                " instance_sha256, series_uid, study_uid, dim, vector, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )

    def mark_unembeddable(self, instance: dict, reason: str) -> None:
        with self.db.transaction() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO unembeddable (sop_instance_uid, instance_sha256, reason)"
                " VALUES (?, ?, ?)",
                (instance["sop_instance_uid"], instance["sha256"], reason),
            )

    def has_embedding(self, instance: dict, backbone_sha256: str) -> bool:
        """Whether these bytes of ``instance`` were embedded by ``backbone_sha256``."""
        row = self.db.query_one(
            "SELECT 1 FROM embeddings WHERE sop_instance_uid = ? AND instance_sha256 = ?"
            " AND backbone_sha256 = ? LIMIT 1",
            (instance["sop_instance_uid"], instance["sha256"], backbone_sha256),
        )
        return row is not None

    def unembeddable(self, instances: list[dict]) -> dict[str, str]:
        """SOP Instance UID -> reason, for those of ``instances`` known to have no usable pixels."""
        found = {}
        for instance in instances:
            row = self.db.query_one(
                "SELECT reason FROM unembeddable WHERE sop_instance_uid = ? AND instance_sha256 = ?",
                (instance["sop_instance_uid"], instance["sha256"]),
            )
            if row is not None:
                found[instance["sop_instance_uid"]] = row["reason"]
        return found

    def for_series(self, series_uid: str, backbone_sha256: str) -> dict[str, np.ndarray]:
        """SOP Instance UID -> ``[frames, D]`` for the current copies of a series' instances."""
        rows = self.db.query(
            "SELECT e.sop_instance_uid, e.frame, e.dim, e.vector FROM embeddings e"
            " JOIN idx.current_instances i ON i.sop_instance_uid = e.sop_instance_uid"
            "  AND i.sha256 = e.instance_sha256"
            " WHERE e.series_uid = ? AND e.backbone_sha256 = ? ORDER BY e.sop_instance_uid, e.frame",
            (series_uid, backbone_sha256),
        )
        grouped: dict[str, list[np.ndarray]] = {}
        for row in rows:
            grouped.setdefault(row["sop_instance_uid"], []).append(_vector(row))
        return {sop: np.stack(frames) for sop, frames in grouped.items()}

    def load(self, backbone_sha256: str) -> tuple[EmbeddingKeys, np.ndarray]:
        """Every current embedding made by ``backbone_sha256``, in study/series/instance order."""
        rows = self.db.query(
            "SELECT e.sop_instance_uid, e.series_uid, e.study_uid, e.frame, e.dim, e.vector"
            " FROM embeddings e JOIN idx.current_instances i"
            " ON i.sop_instance_uid = e.sop_instance_uid AND i.sha256 = e.instance_sha256"
            " WHERE e.backbone_sha256 = ?"
            " ORDER BY e.study_uid, e.series_uid, i.instance_number, e.sop_instance_uid, e.frame",
            (backbone_sha256,),
        )
        keys = EmbeddingKeys(
            sop_instance_uids=[row["sop_instance_uid"] for row in rows],
            series_uids=[row["series_uid"] for row in rows],
            study_uids=[row["study_uid"] for row in rows],
            frames=[int(row["frame"]) for row in rows],
        )
        dim = int(rows[0]["dim"]) if rows else 0
        vectors = np.stack([_vector(row) for row in rows]) if rows else np.zeros((0, dim), "f4")
        return keys, vectors.astype(np.float32, copy=False)

    def recent(self, backbone_sha256: str, dim: int, limit: int) -> tuple[list[str], np.ndarray]:
        """``(study UIDs, float32 [N, dim])`` of the ``limit`` most recently computed current
        embeddings of ``backbone_sha256`` that have ``dim`` values (newest first)."""
        rows = self.db.query(
            "SELECT e.study_uid, e.dim, e.vector FROM embeddings e"
            " JOIN idx.current_instances i"
            " ON i.sop_instance_uid = e.sop_instance_uid AND i.sha256 = e.instance_sha256"
            " WHERE e.backbone_sha256 = ? AND e.dim = ?"
            " ORDER BY e.created_at DESC, e.rowid DESC LIMIT ?",
            (backbone_sha256, dim, limit),
        )
        if not rows:
            return [], np.zeros((0, dim), dtype=np.float32)
        return [row["study_uid"] for row in rows], np.stack([_vector(row) for row in rows])

    def count_of(self, backbone_sha256: str, uids: set[str]) -> int:
        """Current slice embeddings of ``backbone_sha256`` whose instance, series or study UID
        is in ``uids`` (counted in SQL: serve asks often, nothing is loaded)."""
        if not uids:
            return 0
        wanted = json.dumps(sorted(uids))
        return int(
            self.db.scalar(
                "SELECT COUNT(*) FROM embeddings e JOIN idx.current_instances i"
                " ON i.sop_instance_uid = e.sop_instance_uid AND i.sha256 = e.instance_sha256"
                " WHERE e.backbone_sha256 = :backbone"
                " AND (e.sop_instance_uid IN (SELECT value FROM json_each(:uids))"
                "  OR e.series_uid IN (SELECT value FROM json_each(:uids))"
                "  OR e.study_uid IN (SELECT value FROM json_each(:uids)))",
                {"backbone": backbone_sha256, "uids": wanted},
            )
            or 0
        )

    def count(self) -> int:
        return int(self.db.scalar("SELECT COUNT(*) FROM embeddings"))

    def close(self) -> None:
        self.db.close()


def _vector(row) -> np.ndarray:
    return np.frombuffer(row["vector"], dtype="<f4", count=int(row["dim"])).astype(np.float32)


def load_embeddings(
    source: str | os.PathLike | EmbeddingStore, backbone_sha256: str
) -> tuple[EmbeddingKeys, np.ndarray]:
    """``(keys, float32 [N, D])`` of every slice embedded by the backbone ``backbone_sha256``.

    ``source`` is an agent data dir (safe while ``ftl-agent serve`` runs: SQLite WAL
    readers do not block the writer) or an open ``EmbeddingStore``.
    """
    if isinstance(source, EmbeddingStore):
        return source.load(backbone_sha256)
    data_dir = DataDir(Path(source))
    if not data_dir.embeddings.is_file() or not data_dir.index.is_file():
        return EmbeddingKeys([], [], [], []), np.zeros((0, 0), dtype=np.float32)
    publish_current_instances(data_dir)
    store = EmbeddingStore(data_dir)
    try:
        return store.load(backbone_sha256)
    finally:
        store.close()


def publish_current_instances(data_dir: DataDir) -> None:
    """Make sure the index has the view the embedding joins read (an index last written by
    an older agent lacks it; ``InstanceIndex`` creates it)."""
    index = Database(data_dir.index)
    try:
        InstanceIndex(index)
    finally:
        index.close()
