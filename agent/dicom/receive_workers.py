"""Receiving in several processes: ``dicom.receive_processes`` workers share one listening socket.

One Python process receives under one GIL. pynetdicom runs two threads per
association and hands every PDU between them, so four associations in one
process spend more of their time taking turns at the GIL than receiving: the
agent's CPU per instance on four associations was ~1.5x that on one (``ftl-bench
perf``, README "Performance"). With ``receive_processes = N > 1`` the serve
process opens the listening socket and spawns N receive workers (spawned, not
forked: the serve process already runs threads). Each runs the same
``StorageScp`` on that socket, the kernel handing each new connection to
whichever worker accepts it first, with its own handle on the same index: an
instance's file and directory are fsynced and its row committed (SQLite WAL,
``synchronous=FULL``; the index's own lock orders COMMITs across processes)
before its status goes back, exactly as in one process.

What the rest of the agent needs to know comes back over a pipe per worker:
each stored instance (the serve process emits ``instance_stored`` for the eager
embedder and the twin, and the series stage reads the index as always),
metrics increments, and readiness. The workers never touch the model or
onnxruntime. ``dicom.max_associations`` stays one limit over every worker
(a shared count, checked when an association is requested).

A worker that dies (killed, out of memory) loses only what it had not
acknowledged: its open associations break, their senders resend, and the
serve process starts a new worker in its place (at most ``MAX_RESTARTS`` in
``RESTART_WINDOW_S``, then it stops restarting and says so). A worker whose
serve process is gone (its pipe closes) stops by itself.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import socket
import threading
import time
from collections import deque

from ftlct.agent.dicom.admission import SharedAdmission
from ftlct.agent.dicom.prompt_polling import BUSY_WINDOW_S as RECEIVING_WINDOW_S
from ftlct.agent.events import EventBus
from ftlct.agent.logs import log_event
from ftlct.agent.metrics import AgentMetrics
from ftlct.agent.settings import AgentSettings

log = logging.getLogger(__name__)

READY_TIMEOUT_S = 60.0  # a spawned worker imports pynetdicom and opens the index
MAX_RESTARTS = 5
RESTART_WINDOW_S = 60.0
STOP_GRACE_S = 10.0  # beyond the drain timeout, before a worker is killed
LISTEN_BACKLOG = 64


# ---------------------------------------------------------------------- in the worker
class _Report:
    """The worker's side of its pipe: whole messages, from any of its threads."""

    def __init__(self, conn):
        self.conn = conn
        self._lock = threading.Lock()

    def send(self, *message) -> None:
        with self._lock, contextlib.suppress(OSError):  # the serve process is gone: stopping
            self.conn.send(message)


class _RemoteCounter:
    def __init__(self, report: _Report, name: str, label: str | None = None):
        self.report, self.name, self.label = report, name, label

    def labels(self, label: str) -> _RemoteCounter:
        return _RemoteCounter(self.report, self.name, label)

    def inc(self, amount: float = 1) -> None:
        self.report.send("metric", self.name, self.label, amount)


class _RemoteMetrics:
    """The counters ``StorageScp`` increments, counted in the serve process's registry."""

    def __init__(self, report: _Report):
        for name in ("instances_received", "bytes_received", "associations"):
            setattr(self, name, _RemoteCounter(report, name))


class _RemoteEvents:
    def __init__(self, report: _Report):
        self.report = report

    def emit(self, name: str, payload) -> None:
        self.report.send("event", name, payload)


def worker_main(settings: AgentSettings, listener: socket.socket, conn, slot: int, counts) -> None:
    """A receive worker's whole life: serve ``listener`` until told to stop or orphaned."""
    from ftlct.agent.dicom.scp import StorageScp
    from ftlct.agent.logs import configure_logging
    from ftlct.agent.memory import limit_malloc_arenas
    from ftlct.agent.series.series_index import SeriesIndex
    from ftlct.agent.store.database import Database
    from ftlct.agent.store.disk import DiskGuard, free_bytes_of
    from ftlct.agent.store.instance_store import InstanceStore
    from ftlct.agent.store.layout import DataDir

    # SIGTERM and Ctrl-C reach the whole process group (systemd signals every process of
    # the unit): the serve process stops us in order, after in-flight stores have finished.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, signal.SIG_IGN)
    limit_malloc_arenas()  # as the serve process: before this worker's threads exist
    configure_logging(settings.logging)
    report = _Report(conn)
    try:
        storage = settings.storage
        data_dir = DataDir(storage.data_dir)
        db = Database(data_dir.index)
        guard = DiskGuard(free_bytes_of(data_dir.root), storage.min_free_bytes)
        store = InstanceStore.configured(data_dir, db, guard, storage, series=SeriesIndex(db))
        scp = StorageScp(
            settings.dicom,
            settings.tls,
            store,
            guard,
            _RemoteEvents(report),
            _RemoteMetrics(report),
            listener=listener,
            admission=SharedAdmission(counts, slot, settings.dicom.max_associations),
        )
        scp.start()
    except Exception as exc:  # a one-line reason for the serve process to report
        report.send("failed", f"{type(exc).__name__}: {exc}")
        return
    report.send("ready", os.getpid())
    drain_timeout = settings.dicom.drain_timeout_s
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):  # the serve process is gone
            break
        if message[0] == "stop":
            drain_timeout = message[1]
            break
    scp.stop(drain_timeout)
    db.close()
    report.send("stopped")


# ---------------------------------------------------------------------- in the serve process
class _Worker:
    def __init__(self, slot: int, process, conn):
        self.slot = slot
        self.process = process
        self.conn = conn
        self.ready = threading.Event()
        self.failure: str | None = None
        self.reader: threading.Thread | None = None
        # The reader thread and stop() both wait for the process: unguarded, the one whose
        # waitpid() lost the race reads "still alive" and would kill a process already gone.
        self._waiting = threading.Lock()

    def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the process to end; whether it has."""
        with self._waiting:
            self.process.join(timeout)
            return not self.process.is_alive()

    def alive(self) -> bool:
        with self._waiting:
            return self.process.is_alive()


class ReceiveWorkers:
    """``StorageScp``'s part in the serve process when receiving runs in worker processes."""

    def __init__(
        self, settings: AgentSettings, events: EventBus, metrics: AgentMetrics, processes: int
    ):
        if processes < 2:
            raise ValueError("receive workers are for 2 or more processes; 1 receives in-process")
        self.settings = settings
        self.events = events
        self.metrics = metrics
        self.processes = processes
        self._context = multiprocessing.get_context("spawn")
        self._counts = self._context.Array("i", processes)
        self._listener: socket.socket | None = None
        self._workers: dict[int, _Worker] = {}
        self._lock = threading.Lock()
        self._stopping = False
        self._restarts: deque[float] = deque()
        self._last_store_done = float("-inf")

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        d = self.settings.dicom
        where = f"{d.host}:{d.port}"
        try:
            listener = socket.create_server((d.host, d.port), backlog=LISTEN_BACKLOG)
        except OSError as exc:
            raise OSError(exc.errno, f"DICOM on {where}: {exc.strerror or exc}") from exc
        # Every worker polls the one socket; the one that loses the race to accept finds
        # nothing and goes back to polling instead of blocking in accept().
        listener.setblocking(False)
        self._listener = listener
        try:
            for slot in range(self.processes):
                self._spawn(slot)
            for worker in list(self._workers.values()):
                self._wait_ready(worker)
        except BaseException:
            self.stop(drain_timeout_s=0.0)
            raise
        log_event(
            log,
            "dicom_listening",
            ae_title=d.ae_title,
            host=d.host,
            port=d.port,
            tls=self.settings.tls.enabled,
            allow_ae=",".join(d.allow_ae) or "any",
            receive_processes=self.processes,
        )

    def _spawn(self, slot: int) -> _Worker | None:
        """Start the worker for ``slot``; None once stopping (under the lock, so ``stop``
        either sees the new worker or no worker starts)."""
        with self._lock:
            if self._stopping:
                return None
            parent, child = self._context.Pipe()
            process = self._context.Process(
                target=worker_main,
                args=(self.settings, self._listener, child, slot, self._counts),
                name=f"ftl-receive-{slot}",
                daemon=True,
            )
            process.start()
            child.close()
            worker = _Worker(slot, process, parent)
            worker.reader = threading.Thread(
                target=self._read, args=(worker,), name=f"receive-worker-{slot}", daemon=True
            )
            self._workers[slot] = worker
            worker.reader.start()
            return worker

    def _wait_ready(self, worker: _Worker) -> None:
        if not worker.ready.wait(READY_TIMEOUT_S) or worker.failure is not None:
            reason = worker.failure or f"not ready within {READY_TIMEOUT_S:.0f} s"
            raise RuntimeError(f"DICOM receive worker {worker.slot}: {reason}")

    def stop(self, drain_timeout_s: float | None = None) -> None:
        """Stop every worker (each stops accepting, lets in-flight stores finish, closes the
        rest), then close the listening socket."""
        timeout = (
            self.settings.dicom.drain_timeout_s if drain_timeout_s is None else drain_timeout_s
        )
        with self._lock:
            if self._stopping:
                return
            self._stopping = True
            workers = list(self._workers.values())
        for worker in workers:
            with contextlib.suppress(OSError):
                worker.conn.send(("stop", timeout))
        deadline = time.monotonic() + timeout + STOP_GRACE_S
        for worker in workers:
            if not worker.wait(max(0.0, deadline - time.monotonic())):
                log_event(log, "receive_worker_killed", logging.WARNING, slot=worker.slot)
                worker.process.kill()
                worker.wait(5.0)
            if worker.reader is not None:
                worker.reader.join(5.0)
            worker.conn.close()
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        log_event(log, "dicom_stopped", receive_processes=self.processes)

    @property
    def running(self) -> bool:
        return self._listener is not None and not self._stopping

    def receiving(self) -> bool:
        """Whether instances are arriving: one was stored just now (a sender's next one
        follows within milliseconds)."""
        return time.monotonic() - self._last_store_done < RECEIVING_WINDOW_S

    def worker_pids(self) -> list[int]:
        with self._lock:
            return [w.process.pid for w in self._workers.values() if w.alive()]

    # ------------------------------------------------------------------ a worker's reports
    def _read(self, worker: _Worker) -> None:
        while True:
            try:
                message = worker.conn.recv()
            except (EOFError, OSError):
                break
            kind = message[0]
            if kind == "event":
                _, name, payload = message
                self.events.emit(name, payload)
            elif kind == "metric":
                _, name, label, amount = message
                counter = getattr(self.metrics, name)
                (counter.labels(label) if label is not None else counter).inc(amount)
                if name == "instances_received":  # every store's outcome, refusals too
                    self._last_store_done = time.monotonic()
            elif kind == "ready":
                worker.ready.set()
            elif kind == "failed":
                worker.failure = message[1]
                worker.ready.set()
            elif kind == "stopped":
                break
        self._worker_ended(worker)

    def _worker_ended(self, worker: _Worker) -> None:
        worker.wait(5.0)
        self._counts.get_obj()[worker.slot] = 0  # its associations are gone with it
        with self._lock:
            if self._stopping or worker.failure is not None:
                return
            now = time.monotonic()
            while self._restarts and now - self._restarts[0] > RESTART_WINDOW_S:
                self._restarts.popleft()
            if len(self._restarts) >= MAX_RESTARTS:
                log_event(
                    log,
                    "receive_worker_not_restarted",
                    logging.ERROR,
                    slot=worker.slot,
                    exit_code=worker.process.exitcode,
                    restarts=len(self._restarts),
                    window_s=RESTART_WINDOW_S,
                )
                return
            self._restarts.append(now)
        log_event(
            log,
            "receive_worker_died",
            logging.ERROR,
            slot=worker.slot,
            exit_code=worker.process.exitcode,
        )
        worker.conn.close()
        replacement = self._spawn(worker.slot)
        if replacement is not None:
            replacement.ready.wait(READY_TIMEOUT_S)
            if replacement.failure is not None:
                log_event(
                    log,
                    "receive_worker_failed",
                    logging.ERROR,
                    slot=worker.slot,
                    reason=replacement.failure,
                )
