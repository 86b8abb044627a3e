"""Series results: one current row per series; a newer result supersedes (not deletes) the old."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import asdict, dataclass, field

from ftlct.agent.store.database import Database


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
    def __init__(self, db: Database):
        self.db = db

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
