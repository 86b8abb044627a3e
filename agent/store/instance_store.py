"""Store received instances durably, as received, and index them. Knows nothing of networking.

``put_file(path)`` (a Part-10 file already in ``incoming/``, as the SCP receives
it) and ``put(bytes)`` return only after the bytes are on disk (rename, then the
file and its directory fsynced together) and, after that, the index row is
committed (SQLite WAL, synchronous=FULL): the caller may then acknowledge.
Writes from concurrent associations share those fsyncs and one COMMIT
(``store/group_commit.py``). A duplicate SOP Instance with the same bytes
changes nothing. With different bytes the policy decides (``storage.on_conflict``):
``keep_first`` (default, as PACS do) keeps the stored copy, answers success and
keeps the other bytes in quarantine as a counted conflict; ``replace`` stores
the new copy and re-opens its series. A replacement is atomic: the new file
goes to a new, content-named path, the index commit switches to it, and only
then the old file is removed; a crash between any two steps leaves the old or
the new pair whole (``recover`` removes the copy the index does not name).
What cannot be stored is refused with an outcome the DICOM layer maps to a
status, and kept in quarantine when readable bytes exist to keep.
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
from ftlct.agent.settings import CONFLICT_POLICIES, StorageSettings
from ftlct.agent.store.database import Database
from ftlct.agent.store.disk import DiskGuard
from ftlct.agent.store.group_commit import GroupCommit
from ftlct.agent.store.header import HeaderError, InstanceHeader, read_header
from ftlct.agent.store.instance_index import InstanceIndex
from ftlct.agent.store.layout import DataDir
from ftlct.agent.store.page_cache import sync_and_release
from ftlct.agent.store.quarantine import Quarantine, QuarantineLimits
from ftlct.export.files import fsync_dir, sha256_file

log = logging.getLogger(__name__)


class Outcome(StrEnum):
    STORED = "stored"
    DUPLICATE = "duplicate"  # same SOP Instance, same bytes: nothing to do
    REPLACED = "replaced"  # same SOP Instance, new bytes, policy "replace": the new copy wins
    # same SOP Instance, new bytes, policy "keep_first": the stored copy stays, the new
    # bytes go to quarantine; the sender is told success (its instance is stored)
    CONFLICT = "conflict"
    OUT_OF_RESOURCES = "out_of_resources"  # disk below watermark or a write failed
    MISMATCH = "mismatch"  # readable, but not the instance/SOP class announced, or no UIDs
    UNREADABLE = "unreadable"  # not a DICOM dataset we can parse

    @property
    def ok(self) -> bool:
        return self in (Outcome.STORED, Outcome.DUPLICATE, Outcome.REPLACED, Outcome.CONFLICT)


KEEP_FIRST, REPLACE = CONFLICT_POLICIES


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
        on_conflict: str = KEEP_FIRST,
        quarantine_limits: QuarantineLimits | None = None,
        release_page_cache: bool = True,
    ):
        """``release_page_cache``: a stored file's cached pages are released once it is
        durable (``store/page_cache.py``; ``storage.release_page_cache``)."""
        if on_conflict not in CONFLICT_POLICIES:
            raise ValueError(f"on_conflict must be one of {CONFLICT_POLICIES}, not {on_conflict!r}")
        self.data_dir = data_dir.create()
        self.db = db
        self.guard = guard
        self.clock = clock
        self.series = series
        self.on_conflict = on_conflict
        self.index = InstanceIndex(db)
        self.commits = GroupCommit(db, sync_and_release) if release_page_cache else GroupCommit(db)
        self.quarantine = Quarantine(data_dir, db, guard, clock, quarantine_limits)

    @classmethod
    def configured(
        cls,
        data_dir: DataDir,
        db: Database,
        guard: DiskGuard,
        storage: StorageSettings,
        *,
        series: SeriesArrivals,
    ) -> InstanceStore:
        """The store as the ``storage`` settings make it: the serve process's and each of its
        receive workers' (``dicom/receive_workers.py``) are the same."""
        return cls(
            data_dir,
            db,
            guard,
            series=series,
            on_conflict=storage.on_conflict,
            quarantine_limits=QuarantineLimits(
                storage.quarantine_max_bytes, storage.quarantine_max_entries
            ),
            release_page_cache=storage.release_page_cache,
        )

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
            return StoreResult(Outcome.OUT_OF_RESOURCES, self._watermark_reason())
        try:
            temp = self._write_temp(data)
        except OSError as exc:
            return StoreResult(Outcome.OUT_OF_RESOURCES, f"cannot write: {exc.strerror or exc}")
        try:
            return self.put_file(
                temp,
                announced_sop_class=announced_sop_class,
                announced_sop_instance=announced_sop_instance,
                calling_ae=calling_ae,
            )
        finally:
            temp.unlink(missing_ok=True)

    def put_file(
        self,
        path: Path,
        *,
        announced_sop_class: str | None = None,
        announced_sop_instance: str | None = None,
        calling_ae: str = "",
        sha256: str | None = None,
    ) -> StoreResult:
        """Store the Part-10 file at ``path``, which must be in ``incoming/`` (same file system).

        ``sha256``, if given, is the file's (its writer hashed it): it is not read again.
        The file is moved into ``instances/`` or ``quarantine/``; whatever is left at
        ``path`` afterwards (a duplicate, a refusal without room) is the caller's to delete.
        """
        path = Path(path)
        if self.guard.below_watermark():
            return StoreResult(Outcome.OUT_OF_RESOURCES, self._watermark_reason())
        announced = (announced_sop_class, announced_sop_instance)
        try:
            header = read_header(path)
        except HeaderError as exc:
            return self._refuse(path, Outcome.UNREADABLE, str(exc), calling_ae, *announced)
        problem = _mismatch(header, announced_sop_class, announced_sop_instance)
        if problem:
            return self._refuse(path, Outcome.MISMATCH, problem, calling_ae, *announced)
        try:
            return self._write(path, header, calling_ae, sha256)
        except OSError as exc:
            return StoreResult(Outcome.OUT_OF_RESOURCES, f"cannot write: {exc.strerror or exc}")

    def _watermark_reason(self) -> str:
        return f"free space below the {self.guard.min_free_bytes} byte watermark"

    def _refuse(self, path, outcome, reason, calling_ae, sop_class, sop_instance) -> StoreResult:
        quarantine_id = self.quarantine.keep_file(
            path, outcome.value, reason, calling_ae, sop_class, sop_instance
        )
        return StoreResult(outcome, reason, quarantine_id=quarantine_id)

    def _write(
        self, path: Path, header: InstanceHeader, calling_ae: str, sha: str | None
    ) -> StoreResult:
        sha = sha or sha256_file(path)
        size = path.stat().st_size
        sop = header.sop_instance_uid
        existing = self.index.lookup(None, sop)
        if existing is not None and existing["sha256"] == sha:
            return StoreResult(Outcome.DUPLICATE, instance=self._record(sop, False))
        if existing is not None and self.on_conflict == KEEP_FIRST:
            return self._conflict(path, sop, calling_ae)
        relpath = self.data_dir.instance_relpath(header.study_uid, header.series_uid, sop, sha)
        target = self.data_dir.root / relpath
        placed = []

        def place_and_index(conn, sync_paths):
            # Another association may have stored this SOP Instance since the look above
            # (or earlier in the same group commit).
            existing = self.index.lookup(conn, sop)
            if existing is not None and existing["sha256"] == sha:
                return Outcome.DUPLICATE, existing, False
            if existing is not None and self.on_conflict == KEEP_FIRST:
                raise _LostRace
            _make_dirs_durable(target.parent, self.data_dir.root)
            os.replace(path, target)
            placed.append(target)
            # The receiver wrote the file without fsync: the file and its new name are synced
            # together, before the COMMIT that indexes it (store/group_commit.py).
            sync_paths.update((target, target.parent))
            reopened = self._index(conn, header, relpath, size, sha, calling_ae, existing)
            return (
                (Outcome.REPLACED if existing is not None else Outcome.STORED),
                existing,
                reopened,
            )

        def unplace():  # not committed: the index still names the old copy (or none)
            for copy in placed:
                copy.unlink(missing_ok=True)

        try:
            outcome, existing, reopened = self.commits.run(place_and_index, unplace)
        except _LostRace:
            return self._conflict(path, sop, calling_ae)
        if outcome is Outcome.DUPLICATE:
            return StoreResult(Outcome.DUPLICATE, instance=self._record(sop, False))
        if existing is not None and existing["path"] != relpath:
            # Only now that the index names the new copy may the old one go.
            (self.data_dir.root / existing["path"]).unlink(missing_ok=True)
        return StoreResult(outcome, instance=self._record(sop, reopened))

    def _conflict(self, path: Path, sop: str, calling_ae: str) -> StoreResult:
        reason = "SOP Instance UID already stored with other bytes; the first copy is kept"
        quarantine_id = self.quarantine.keep_file(
            path, Outcome.CONFLICT.value, reason, calling_ae, None, sop
        )
        log_event(log, "instance_conflict", logging.WARNING, sop_instance_uid=sop)
        return StoreResult(
            Outcome.CONFLICT,
            reason,
            instance=self._record(sop, False),
            quarantine_id=quarantine_id,
        )

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
        # Committed by now; read without queueing behind the next group commit's fsyncs.
        row = self.index.get_committed(sop)
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
        """After a crash: drop unacknowledged temp files and copies the index does not name.

        A file renamed into place whose index row never committed was not acknowledged.
        If its SOP Instance is indexed with another copy (an interrupted replacement, or
        one whose old copy was not removed yet), the index's copy is the one that stands
        and this one goes. If the SOP Instance is not indexed at all, the file is a
        complete first copy: indexing it loses nothing and frees no one from resending.
        """
        removed = 0
        for temp in self.data_dir.incoming.iterdir():
            if temp.is_file():
                temp.unlink(missing_ok=True)
                removed += 1
        known = self.index.paths()
        indexed = dropped = 0
        for path in sorted(self.data_dir.instances.rglob("*.dcm")):
            relpath = path.relative_to(self.data_dir.root).as_posix()
            if relpath in known:
                continue
            try:
                header = read_header(path)
            except HeaderError:
                header = None
            sha = sha256_file(path)
            if (
                header is None
                or _mismatch(header, None, None)
                or not _name_matches(path, sha)
                or self.index.lookup(None, header.sop_instance_uid) is not None
            ):
                path.unlink(missing_ok=True)  # a copy of something indexed elsewhere, or junk
                dropped += 1
                continue
            with self.db.transaction() as conn:
                self._index(conn, header, relpath, path.stat().st_size, sha, "", None)
            indexed += 1
        quarantine_orphans = self.quarantine.recover()
        report = {
            "temp_removed": removed,
            "orphans_indexed": indexed,
            "stale_removed": dropped,
            "quarantine_orphans_removed": quarantine_orphans,
        }
        if any(report.values()):
            log_event(log, "store_recovered", **report)
        return report


class _LostRace(Exception):
    """Inside the store's transaction: another copy of the SOP Instance won meanwhile."""


def _name_matches(path: Path, sha: str) -> bool:
    """Content-named files carry their sha256 prefix (older, UID-only names are trusted)."""
    _, dash, suffix = path.stem.rpartition("-")
    return not dash or sha.startswith(suffix)


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
