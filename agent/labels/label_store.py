"""The ``labels`` table: one confirmed label per UID, at the level the UID was found at.

A UID is a StudyInstanceUID, SeriesInstanceUID or SOPInstanceUID; it is
resolved against the index when the label is set (``level``). Labels for UIDs
the agent has not received yet are refused unless the caller allows them as
``pending``: a pending label is matched again at training time, so it counts
as soon as its images arrive. Training joins labels to slice embeddings, the
most specific level winning (instance > series > study).

Setting the same label again changes nothing (re-import is idempotent); a
different label for a UID replaces the old one.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field

from ftlct.agent.series.series_index import SeriesIndex
from ftlct.agent.store.database import Database
from ftlct.agent.store.instance_index import InstanceIndex

LEVELS = ("study", "series", "instance", "pending")
# What a pending UID must look like (PS3.5 9.1: digits and dots, at most 64 characters).
DICOM_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")

SCHEMA = """
CREATE TABLE IF NOT EXISTS labels (
    uid TEXT PRIMARY KEY,
    label TEXT NOT NULL,
    level TEXT NOT NULL,           -- study, series, instance, or pending (not received yet)
    source TEXT NOT NULL,          -- "set" or the CSV file name
    updated_at REAL NOT NULL
);
"""


class LabelError(ValueError):
    """A label that cannot be stored; the message is one line for the CLI."""


@dataclass
class LabelSummary:
    new: int = 0
    changed: int = 0
    unchanged: int = 0
    pending: int = 0
    levels: dict[str, int] = field(default_factory=dict)

    def text(self) -> str:
        levels = ", ".join(f"{n} {level}" for level, n in sorted(self.levels.items()))
        return f"{self.new} new, {self.changed} changed, {self.unchanged} unchanged" + (
            f" ({levels})" if levels else ""
        )


def resolve_level(db: Database, uid: str) -> str | None:
    """``study``, ``series`` or ``instance`` if the index knows ``uid``, else None."""
    if InstanceIndex(db, create=False).get(uid) is not None:
        return "instance"
    series = SeriesIndex(db, create=False)
    if series.has_series(uid):
        return "series"
    if series.has_study(uid):
        return "study"
    return None


class LabelStore:
    def __init__(self, db: Database, create: bool = True):
        """``create=False`` for readers: no DDL, and an index without labels reads as empty."""
        self.db = db
        self._exists = db.adopt(SCHEMA, "labels", create)

    def set_many(
        self,
        rows: list[tuple[str, str]],
        allowed: list[str],
        source: str,
        allow_pending: bool = False,
        where: list[str] | None = None,
    ) -> LabelSummary:
        """Store ``(uid, label)`` pairs all or nothing; ``LabelError`` names the first bad row.

        ``where`` gives each row's origin for messages (e.g. ``"line 7"``).
        """
        where = where or [f"row {i + 1}" for i in range(len(rows))]
        seen: dict[str, tuple[str, str]] = {}
        for (uid, label), origin in zip(rows, where, strict=True):
            if label not in allowed:
                raise LabelError(
                    f"{origin}: label {label!r} is not one of the model's labels "
                    f"({', '.join(allowed)}); nothing stored"
                )
            if uid in seen and seen[uid][0] != label:
                raise LabelError(
                    f"{origin}: {uid} is labelled {seen[uid][0]!r} at {seen[uid][1]} and "
                    f"{label!r} here; nothing stored"
                )
            seen[uid] = (label, origin)
        levels = {uid: resolve_level(self.db, uid) for uid in seen}
        unknown = [uid for uid, level in levels.items() if level is None]
        malformed = [uid for uid in unknown if len(uid) > 64 or not DICOM_UID.match(uid)]
        if malformed:
            raise LabelError(
                f"{seen[malformed[0]][1]}: {malformed[0]!r} is neither a UID this agent received "
                "nor a DICOM UID (digits and dots); nothing stored"
            )
        if unknown and not allow_pending:
            raise LabelError(
                f"{len(unknown)} UID(s) not received by this agent (first: {unknown[0]} at "
                f"{seen[unknown[0]][1]}); nothing stored (--allow-pending keeps them until "
                "their images arrive)"
            )
        summary = LabelSummary()
        now = time.time()
        with self.db.transaction() as conn:
            for uid, (label, _origin) in seen.items():
                level = levels[uid] or "pending"
                old = conn.execute(
                    "SELECT label, level FROM labels WHERE uid = ?", (uid,)
                ).fetchone()
                summary.levels[level] = summary.levels.get(level, 0) + 1
                if level == "pending":
                    summary.pending += 1
                if old is not None and old["label"] == label and old["level"] == level:
                    summary.unchanged += 1
                    continue
                if old is None:
                    summary.new += 1
                else:
                    summary.changed += 1
                conn.execute(
                    "INSERT OR REPLACE INTO labels (uid, label, level, source, updated_at)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (uid, label, level, source, now),
                )
        return summary

    def all(self) -> dict[str, str]:
        """uid -> label, every level (pending ones too: training matches them again)."""
        if not self._exists:
            return {}
        return {row["uid"]: row["label"] for row in self.db.query("SELECT uid, label FROM labels")}

    def uids(self) -> set[str]:
        """Every labelled UID, whatever its level."""
        return set(self.all())

    def count(self) -> int:
        if not self._exists:
            return 0
        return int(self.db.scalar("SELECT COUNT(*) FROM labels") or 0)

    def counts_by_level(self) -> dict[str, int]:
        if not self._exists:
            return {}
        return self.db.tally("SELECT level, COUNT(*) FROM labels GROUP BY level")

    def signature(self) -> tuple:
        """Changes whenever a label is added or changed (serve re-checks training then)."""
        row = self.db.query_one("SELECT COUNT(*), MAX(updated_at) FROM labels")
        return (row[0], row[1])
