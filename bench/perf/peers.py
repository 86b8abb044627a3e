"""The DICOM receivers ``ftl-bench perf`` compares, as real processes on free loopback ports.

- dcmtk ``storescp`` (writes each file, no fsync, no index);
- Orthanc (durable: SQLite index, ``SyncStorageArea``), no plugins;
- ``ftl-agent serve`` (durable, inference on) from this installation.

Every dcmtk-based peer, and the sender (dcmtk ``storescu``, by absolute path:
pynetdicom installs a script of the same name), runs with ``TCP_NODELAY=1``:
without it Nagle's algorithm and delayed ACKs cost ~40 ms per exchange.
Each runs in its own process group and is killed on exit.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ftlct.bench.process_group import stop_process_group

STORESCP = "/usr/bin/storescp"
STORESCU = "/usr/bin/storescu"
ORTHANC = "/usr/sbin/Orthanc"
LOOPBACK = "127.0.0.1"
DCMTK_ENV = {"TCP_NODELAY": "1"}
SENDER_MAX_PDU = "131072"


class PeerError(RuntimeError):
    """A receiver that did not start, or a sender that failed."""


def missing_programs() -> list[str]:
    return [p for p in (STORESCP, STORESCU, ORTHANC) if not Path(p).is_file()]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def _wait_listening(port: int, process: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise PeerError(f"exited with {process.returncode} before listening on {port}")
        try:
            with socket.create_connection((LOOPBACK, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise PeerError(f"nothing listening on {port} after {timeout} s")


@dataclass
class Receiver:
    name: str
    ae_title: str
    port: int
    process: subprocess.Popen
    storage: Path

    def pids(self) -> list[int]:
        """The process and its descendants (an agent's receive workers), Linux."""
        found, queue = [], [self.process.pid]
        while queue:
            pid = queue.pop()
            found.append(pid)
            try:
                for task in Path(f"/proc/{pid}/task").iterdir():
                    queue.extend(int(c) for c in (task / "children").read_text().split())
            except OSError:
                continue
        return found

    def peak_rss_bytes(self) -> int | None:
        """VmHWM summed over the process and its descendants (each one's own peak: an upper
        bound when they peak at different times), None if it cannot be read."""
        return _summed(_status_kb(pid, "VmHWM") for pid in self.pids())

    def rss_bytes(self) -> int | None:
        return _summed(_status_kb(pid, "VmRSS") for pid in self.pids())

    def pss_bytes(self) -> int | None:
        """Proportional set size summed over the process and its descendants: each page they
        share (a shared library, the interpreter) counted once over all of them, where
        summed RSS counts it in every process. None if it cannot be read."""
        return _summed(_rollup_kb(pid, "Pss") for pid in self.pids())

    def cpu_seconds(self) -> float | None:
        """User + system CPU time the process and its descendants have used so far (Linux),
        None if unreadable."""
        return _summed(_cpu_seconds(pid) for pid in self.pids())


def _summed(values) -> float | None:
    values = list(values)
    return None if not values or values[0] is None else sum(v for v in values if v is not None)


def _cpu_seconds(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def _rollup_kb(pid: int, key: str) -> int | None:
    """A field of ``/proc/PID/smaps_rollup`` in bytes (Linux 4.14+)."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _status_kb(pid: int, key: str) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


@contextlib.contextmanager
def _process(
    name: str, ae: str, port: int, command: list[str], env: dict, storage: Path, log: Path
) -> Iterator[Receiver]:
    with log.open("ab") as out:
        process = subprocess.Popen(
            command,
            env={**os.environ, **env},
            stdout=out,
            stderr=out,
            cwd=storage,
            start_new_session=True,
        )
    try:
        _wait_listening(port, process)
        yield Receiver(name, ae, port, process, storage)
    finally:
        stop_process_group(process, timeout=30, kill_timeout=10)


def storescp(work: Path) -> contextlib.AbstractContextManager[Receiver]:
    storage = work / "storescp"
    storage.mkdir(parents=True, exist_ok=True)
    port = free_port()
    command = [STORESCP, "-aet", "STORESCP", "-od", str(storage), str(port)]
    return _process(
        "storescp", "STORESCP", port, command, DCMTK_ENV, storage, work / "storescp.log"
    )


def orthanc(work: Path) -> contextlib.AbstractContextManager[Receiver]:
    storage = work / "orthanc"
    storage.mkdir(parents=True, exist_ok=True)
    port, http_port = free_port(), free_port()
    config = {
        "Name": "ftlct-perf",
        "StorageDirectory": str(storage / "storage"),
        "IndexDirectory": str(storage / "index"),
        "HttpServerEnabled": True,
        "HttpPort": http_port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomAet": "ORTHANC",
        "DicomPort": port,
        "DicomCheckCalledAet": False,
        "DicomAlwaysAllowStore": True,
        "Plugins": [],
        "StorageCompression": False,
        "SyncStorageArea": True,  # durable, as the agent is (Orthanc's default, said out loud)
        "SaveJobs": False,
    }
    path = storage / "orthanc.json"
    path.write_text(json.dumps(config, indent=2))
    command = [ORTHANC, str(path)]
    return _process("orthanc", "ORTHANC", port, command, DCMTK_ENV, storage, work / "orthanc.log")


def agent(
    work: Path, model: Path, env: dict[str, str] | None = None, name: str = "agent"
) -> contextlib.AbstractContextManager[Receiver]:
    """``ftl-agent serve`` with a fresh data dir under ``work``."""
    storage = work / name
    storage.mkdir(parents=True, exist_ok=True)
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "ftlct.agent",
        "serve",
        "--data-dir",
        str(storage / "data"),
        "--model",
        str(Path(model).resolve()),
        "--host",
        LOOPBACK,
        "--port",
        str(port),
        "--ae-title",
        "FTLCT",
    ]
    return _process(name, "FTLCT", port, command, env or {}, storage, work / f"{name}.log")


def storescu(receiver: Receiver, files: list[Path], *extra: str) -> subprocess.Popen:
    """Start dcmtk ``storescu`` sending ``files`` over one association; the caller waits."""
    command = [
        STORESCU,
        "--max-pdu",
        SENDER_MAX_PDU,
        "-aet",
        "PERFSCU",
        "-aec",
        receiver.ae_title,
        *extra,
        LOOPBACK,
        str(receiver.port),
        *map(str, files),
    ]
    return subprocess.Popen(
        command,
        env={**os.environ, **DCMTK_ENV},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def send(receiver: Receiver, files: list[Path], associations: int = 1, *extra: str) -> float:
    """Seconds until every file is acknowledged, over ``associations`` concurrent senders."""
    shares = [files[i::associations] for i in range(associations)]
    started = time.perf_counter()
    senders = [storescu(receiver, share, *extra) for share in shares if share]
    failures = []
    for sender in senders:
        _, err = sender.communicate(timeout=600)
        if sender.returncode != 0:
            failures.append(err.strip().splitlines()[-1:] or [f"exit {sender.returncode}"])
    seconds = time.perf_counter() - started
    if failures:
        raise PeerError(f"storescu to {receiver.name} failed: {failures[0][0]}")
    return seconds


@contextlib.contextmanager
def _agent_index(receiver: Receiver) -> Iterator:
    """The agent's index (SQLite WAL: safe to read while it runs), None before it exists."""
    from ftlct.agent.store.database import Database

    index = receiver.storage / "data" / "index.sqlite"
    if not index.is_file():
        yield None
        return
    db = Database(index, create=False)
    try:
        yield db
    finally:
        db.close()


def agent_results(receiver: Receiver) -> list[dict]:
    """The agent's ``results --json`` rows."""
    from ftlct.agent.status import list_results

    with _agent_index(receiver) as db:
        return [] if db is None else list_results(db)


def pending_series(receiver: Receiver) -> int:
    """Series the agent has not finished (still open, or complete and waiting for inference)."""
    with _agent_index(receiver) as db:
        if db is None:
            return 0
        return db.scalar("SELECT count(*) FROM series WHERE state IN ('open', 'complete')")


def _poll(receiver: Receiver, ready, timeout: float, waiting_for: str):
    """``ready()``'s first truthy value, polled until ``timeout``; the receiver must live."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = ready()
        if value:
            return value
        if receiver.process.poll() is not None:
            raise PeerError(f"{receiver.name} exited with {receiver.process.returncode}")
        time.sleep(0.1)
    raise PeerError(f"{receiver.name}: {waiting_for} after {timeout} s")


def wait_until_idle(receiver: Receiver, timeout: float = 600.0) -> None:
    """Until every series the agent received has its result (or failed)."""
    _poll(receiver, lambda: pending_series(receiver) == 0, timeout, "series still pending")


def wait_for_results(receiver: Receiver, count: int, timeout: float = 600.0) -> list[dict]:
    def enough() -> list[dict] | None:
        results = agent_results(receiver)
        return results if len(results) >= count else None

    return _poll(receiver, enough, timeout, f"{count} results not there")
