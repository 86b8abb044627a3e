"""Series results: one current row per series; a newer result supersedes (not deletes) the old.

The ``results`` table is owned here: the worker inserts, delivery, the twin and
status read through ``ResultStore``.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import asdict, dataclass, field

from ftlct.agent.store.database import Database

SCHEMA = """
CREATE TABLE IF NOT EXISTS results (
    id INTEGER PRIMARY KEY,
    series_uid TEXT NOT NULL,
    study_uid TEXT NOT NULL,
    generation INTEGER NOT NULL,
    n_instances INTEGER NOT NULL,
    n_slices INTEGER NOT NULL,
    n_skipped INTEGER NOT NULL,
    label TEXT NOT NULL,
    probabilities TEXT NOT NULL,   -- JSON label -> float
    key_instances TEXT NOT NULL,   -- JSON list of SOP Instance UIDs that decided the result
    aggregation TEXT NOT NULL,
    model_version TEXT NOT NULL,
    backbone_sha256 TEXT NOT NULL,
    latency_s REAL NOT NULL,       -- last instance received -> result stored
    inference_s REAL NOT NULL,     -- compute time of the job
    created_at REAL NOT NULL,
    superseded INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS results_series ON results (series_uid, superseded);
"""


@dataclass(frozen=True)
class SeriesResult:
    series_uid: str
    study_uid: str
    generation: int
    n_instances: int
    n_slices: int
    n_skipped: int  # instances without usable pixels (non-image objects, undecodable data)
    label: str
    probabilities: dict[str, float]
    key_instances: list[str]
    aggregation: str
    model_version: str
    backbone_sha256: str
    latency_s: float  # last instance received -> result stored; includes the quiet period
    inference_s: float  # compute time of the job
    created_at: float
    id: int | None = field(default=None, compare=False)

    def to_json(self) -> dict:
        """The ``ftl-agent results --json`` row (DESIGN.md keys plus extras)."""
        doc = asdict(self)
        doc["result_id"] = doc.pop("id")
        doc.pop("generation")
        doc["latency_s"] = round(self.latency_s, 3)
        doc["inference_s"] = round(self.inference_s, 3)
        return doc

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> SeriesResult:
        return cls(
            series_uid=row["series_uid"],
            study_uid=row["study_uid"],
            generation=row["generation"],
            n_instances=row["n_instances"],
            n_slices=row["n_slices"],
            n_skipped=row["n_skipped"],
            label=row["label"],
            probabilities=json.loads(row["probabilities"]),
            key_instances=json.loads(row["key_instances"]),
            aggregation=row["aggregation"],
            model_version=row["model_version"],
            backbone_sha256=row["backbone_sha256"],
            latency_s=row["latency_s"],
            inference_s=row["inference_s"],
            created_at=row["created_at"],
            id=row["id"],
        )


class ResultStore:
    def __init__(self, db: Database, create: bool = True):
        """``create=False`` for readers (``ftl-agent status``): no DDL, and an index without
        the table reads as empty."""
        self.db = db
        self._exists = db.adopt(SCHEMA, "results", create)

    def insert(self, conn: sqlite3.Connection, result: SeriesResult) -> SeriesResult:
        """Write ``result`` as the series' current one (inside the caller's transaction)."""
        conn.execute(
            "UPDATE results SET superseded = 1 WHERE series_uid = ? AND superseded = 0",
            (result.series_uid,),
        )
        cursor = conn.execute(
            "INSERT INTO results (series_uid, study_uid, generation, n_instances, n_slices,"
            " n_skipped, label, probabilities, key_instances, aggregation, model_version,"
            " backbone_sha256, latency_s, inference_s, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                result.series_uid,
                result.study_uid,
                result.generation,
                result.n_instances,
                result.n_slices,
                result.n_skipped,
                result.label,
                json.dumps(result.probabilities),
                json.dumps(result.key_instances),
                result.aggregation,
                result.model_version,
                result.backbone_sha256,
                result.latency_s,
                result.inference_s,
                result.created_at,
            ),
        )
        return SeriesResult(**{**asdict(result), "id": int(cursor.lastrowid)})

    def current(self) -> list[SeriesResult]:
        """The current result of every series, oldest first."""
        if not self._exists:
            return []
        rows = self.db.query("SELECT * FROM results WHERE superseded = 0 ORDER BY created_at, id")
        return [SeriesResult.from_row(row) for row in rows]

    def get(self, result_id: int) -> SeriesResult | None:
        row = self.db.query_one("SELECT * FROM results WHERE id = ?", (result_id,))
        return None if row is None else SeriesResult.from_row(row)

    def history(self, series_uid: str) -> list[SeriesResult]:
        rows = self.db.query(
            "SELECT * FROM results WHERE series_uid = ? ORDER BY id", (series_uid,)
        )
        return [SeriesResult.from_row(row) for row in rows]

    def is_superseded(self, result_id: int) -> bool:
        row = self.db.query_one("SELECT superseded FROM results WHERE id = ?", (result_id,))
        return row is not None and bool(row["superseded"])

    def series_with_result(self) -> int:
        """Series that have a current result."""
        if not self._exists:
            return 0
        return int(
            self.db.scalar("SELECT COUNT(DISTINCT series_uid) FROM results WHERE superseded = 0")
            or 0
        )

    def recent_latencies(self, limit: int) -> list[float]:
        """``latency_s`` of the ``limit`` newest current results, newest first."""
        if not self._exists:
            return []
        rows = self.db.query(
            "SELECT latency_s FROM results WHERE superseded = 0 ORDER BY id DESC LIMIT ?",
            (limit,),
        )
        return [row["latency_s"] for row in rows]
