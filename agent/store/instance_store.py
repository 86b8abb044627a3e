"""Store received instances durably, as received, and index them. Knows nothing of networking.

``put(bytes)`` returns only after the bytes are on disk (temp file, fsync,
rename, directory fsync) and the index row is committed (SQLite WAL,
synchronous=FULL): the caller may then acknowledge. A duplicate SOP Instance
with the same bytes changes nothing; with different bytes it replaces the
stored copy and re-opens its series. What cannot be stored is refused with an
outcome the DICOM layer maps to a status, and kept in quarantine when readable
bytes exist to keep.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import tempfile
import time
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Protocol

from ftlct.agent.logs import log_event
from ftlct.agent.store.database import Database
from ftlct.agent.store.disk import DiskGuard
from ftlct.agent.store.header import HeaderError, InstanceHeader, read_header
from ftlct.agent.store.instance_index import InstanceIndex
from ftlct.agent.store.layout import DataDir
from ftlct.agent.store.quarantine import Quarantine
from ftlct.export.files import fsync_dir, sha256_bytes

log = logging.getLogger(__name__)


class Outcome(StrEnum):
    STORED = "stored"
    DUPLICATE = "duplicate"  # same SOP Instance, same bytes: nothing to do
    REPLACED = "replaced"  # same SOP Instance, new bytes: the new copy wins
    OUT_OF_RESOURCES = "out_of_resources"  # disk below watermark or a write failed
    MISMATCH = "mismatch"  # readable, but not the instance/SOP class announced, or no UIDs
    UNREADABLE = "unreadable"  # not a DICOM dataset we can parse

    @property
    def ok(self) -> bool:
        return self in (Outcome.STORED, Outcome.DUPLICATE, Outcome.REPLACED)


@dataclass(frozen=True)
class StoredInstance:
    sop_instance_uid: str
    sop_class_uid: str
    study_uid: str
    series_uid: str
    modality: str | None
    path: str
    size: int
    sha256: str
    received_at: float
    series_reopened: bool


@dataclass(frozen=True)
class StoreResult:
    outcome: Outcome
    reason: str | None = None
    instance: StoredInstance | None = None
    quarantine_id: int | None = None

    @property
    def ok(self) -> bool:
        return self.outcome.ok


class SeriesArrivals(Protocol):
    """The series stage, told of every indexed instance inside the transaction that indexes it
    (``ftlct.agent.series.series_index.SeriesIndex``); the store does not know series."""

    def instance_indexed(
        self,
        conn: sqlite3.Connection,
        header: InstanceHeader,
        previous_series: str | None,
        now: float,
    ) -> bool:
        """True if the instance re-opened a series that had finished."""
        ...


class InstanceStore:
    def __init__(
        self,
        data_dir: DataDir,
        db: Database,
        guard: DiskGuard,
        clock=time.time,
        *,
        series: SeriesArrivals,
    ):
        self.data_dir = data_dir.create()
        self.db = db
        self.guard = guard
        self.clock = clock
        self.series = series
        self.index = InstanceIndex(db)
        self.quarantine = Quarantine(data_dir, db, guard, clock)

    # ------------------------------------------------------------------ receive
    def put(
        self,
        data: bytes,
        *,
        announced_sop_class: str | None = None,
        announced_sop_instance: str | None = None,
        calling_ae: str = "",
    ) -> StoreResult:
        """Store one Part-10 byte stream (preamble + file meta + dataset as received)."""
        if self.guard.below_watermark(len(data)):
            reason = f"free space below the {self.guard.min_free_bytes} byte watermark"
            return StoreResult(Outcome.OUT_OF_RESOURCES, reason)
        try:
            header = read_header(data)
        except HeaderError as exc:
            return self._refuse(
                data,
                Outcome.UNREADABLE,
                str(exc),
                calling_ae,
                announced_sop_class,
                announced_sop_instance,
            )
        problem = _mismatch(header, announced_sop_class, announced_sop_instance)
        if problem:
            return self._refuse(
                data,
                Outcome.MISMATCH,
                problem,
                calling_ae,
                announced_sop_class,
                announced_sop_instance,
            )
        try:
            return self._write(data, header, calling_ae)
        except OSError as exc:
            return StoreResult(Outcome.OUT_OF_RESOURCES, f"cannot write: {exc.strerror or exc}")

    def _refuse(self, data, outcome, reason, calling_ae, sop_class, sop_instance) -> StoreResult:
        quarantine_id = self.quarantine.keep(
            data, outcome.value, reason, calling_ae, sop_class, sop_instance
        )
        return StoreResult(outcome, reason, quarantine_id=quarantine_id)

    def _write(self, data: bytes, header: InstanceHeader, calling_ae: str) -> StoreResult:
        sha = sha256_bytes(data)
        sop = header.sop_instance_uid
        existing = self.index.lookup(None, sop)
        if existing is not None and existing["sha256"] == sha:
            return StoreResult(Outcome.DUPLICATE, instance=self._record(sop, False))
        relpath = self.data_dir.instance_relpath(header.study_uid, header.series_uid, sop)
        temp = self._write_temp(data)
        try:
            with self.db.transaction() as conn:
                existing = self.index.lookup(conn, sop)
                if existing is not None and existing["sha256"] == sha:
                    return StoreResult(Outcome.DUPLICATE, instance=self._record(sop, False))
                target = self.data_dir.root / relpath
                _make_dirs_durable(target.parent, self.data_dir.root)
                os.replace(temp, target)
                fsync_dir(target.parent)
                reopened = self._index(conn, header, relpath, len(data), sha, calling_ae, existing)
        finally:
            temp.unlink(missing_ok=True)
        if existing is not None and existing["path"] != relpath:
            # The old copy lived elsewhere (its study or series changed); the new one wins.
            (self.data_dir.root / existing["path"]).unlink(missing_ok=True)
        outcome = Outcome.REPLACED if existing is not None else Outcome.STORED
        return StoreResult(outcome, instance=self._record(sop, reopened))

    def _write_temp(self, data: bytes) -> Path:
        fd, name = tempfile.mkstemp(suffix=".part", dir=self.data_dir.incoming)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
        except BaseException:
            Path(name).unlink(missing_ok=True)
            raise
        return Path(name)

    def _index(self, conn, header, relpath, size, sha, calling_ae, existing) -> bool:
        """Index the instance and count it into its series; True if a finished series re-opened."""
        now = self.clock()
        self.index.put(conn, header, relpath, size, sha, calling_ae, now)
        previous = existing["series_uid"] if existing is not None else None
        return self.series.instance_indexed(conn, header, previous, now)

    def _record(self, sop: str, reopened: bool) -> StoredInstance:
        row = self.index.get(sop)
        return StoredInstance(
            sop_instance_uid=row["sop_instance_uid"],
            sop_class_uid=row["sop_class_uid"],
            study_uid=row["study_uid"],
            series_uid=row["series_uid"],
            modality=row["modality"],
            path=row["path"],
            size=row["size"],
            sha256=row["sha256"],
            received_at=row["received_at"],
            series_reopened=reopened,
        )

    # ------------------------------------------------------------------ read
    def instances_of(self, series_uid: str) -> list[dict]:
        return self.index.of_series(series_uid)

    def instance(self, sop_uid: str) -> dict | None:
        return self.index.get(sop_uid)

    def path_of(self, instance: dict) -> Path:
        return self.data_dir.resolve(instance["path"])

    def count(self) -> int:
        return self.index.count()

    # ------------------------------------------------------------------ restart
    def recover(self) -> dict[str, int]:
        """After a crash: drop unacknowledged temp files, index instance files the index lacks.

        A file renamed into place whose index row never committed was not acknowledged,
        but it is a complete copy: indexing it loses nothing and frees no one from resending.
        """
        removed = 0
        for temp in self.data_dir.incoming.iterdir():
            temp.unlink(missing_ok=True)
            removed += 1
        known = self.index.paths()
        indexed = dropped = 0
        for path in sorted(self.data_dir.instances.rglob("*.dcm")):
            relpath = path.relative_to(self.data_dir.root).as_posix()
            if relpath in known:
                continue
            data = path.read_bytes()
            try:
                header = read_header(data)
            except HeaderError:
                header = None
            if (
                header is None
                or _mismatch(header, None, None)
                or self.index.lookup(None, header.sop_instance_uid) is not None
            ):
                path.unlink(missing_ok=True)  # a stale copy of something indexed elsewhere
                dropped += 1
                continue
            with self.db.transaction() as conn:
                self._index(conn, header, relpath, len(data), sha256_bytes(data), "", None)
            indexed += 1
        if removed or indexed or dropped:
            log_event(
                log,
                "store_recovered",
                temp_removed=removed,
                orphans_indexed=indexed,
                stale_removed=dropped,
            )
        return {"temp_removed": removed, "orphans_indexed": indexed, "stale_removed": dropped}


def _mismatch(header: InstanceHeader, sop_class: str | None, sop_instance: str | None) -> str:
    """Why the dataset does not match what was announced (or lacks the UIDs we group by)."""
    if not header.sop_class_uid or not header.sop_instance_uid:
        return "dataset has no SOP Class UID or SOP Instance UID"
    if sop_class and header.sop_class_uid != sop_class:
        return f"SOP Class UID in the dataset differs from the request ({sop_class})"
    if sop_instance and header.sop_instance_uid != sop_instance:
        return "SOP Instance UID in the dataset differs from the request"
    if not header.study_uid or not header.series_uid:
        return "dataset has no Study or Series Instance UID"
    return ""


def _make_dirs_durable(directory: Path, root: Path) -> None:
    """mkdir -p, fsyncing each parent whose entries changed, so the new path survives a crash."""
    missing = []
    current = directory
    while not current.exists() and current != root:
        missing.append(current)
        current = current.parent
    for path in reversed(missing):
        try:
            path.mkdir()
        except FileExistsError:
            continue  # another thread made it
        fsync_dir(path.parent)
