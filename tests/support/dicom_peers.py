"""Real DICOM peers for tests: the agent as a subprocess, dcmtk's storescu/echoscu, a pynetdicom SCU.

    with running_agent(tmp_path, model_dir.path) as agent:     # `python -m ftlct.agent serve`
        storescu("-aec", agent.ae_title, "127.0.0.1", str(agent.port), "file.dcm")
        wait_for(lambda: len(agent.results()) == 1, timeout=60)

The agent runs in its own process group; leaving the ``with`` stops it
(SIGTERM, then SIGKILL), also when the test fails.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.paths import REPO, require_program
from tests.support.ports import LOOPBACK, free_port, wait_for_port

STORESCU = "/usr/bin/storescu"
ECHOSCU = "/usr/bin/echoscu"


def wait_for(predicate: Callable[[], object], timeout: float, interval: float = 0.2):
    """Poll ``predicate`` until it returns something truthy; that value, or TimeoutError."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {timeout}s")
        time.sleep(interval)


@dataclass
class AgentProcess:
    data_dir: Path
    model: Path
    port: int
    args: list[str]
    env: dict[str, str]
    log_path: Path
    ae_title: str = "FTLCT"
    process: subprocess.Popen | None = None
    restarts: int = field(default=0)

    def start(self) -> AgentProcess:
        command = [
            sys.executable,
            "-m",
            "ftlct.agent",
            "serve",
            "--data-dir",
            str(self.data_dir),
            "--model",
            str(self.model),
            "--host",
            LOOPBACK,
            "--port",
            str(self.port),
            "--ae-title",
            self.ae_title,
            *self.args,
        ]
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            command,
            cwd=REPO,
            env={**os.environ, **self.env},
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
        log.close()
        try:
            wait_for_port(self.port, proc=self.process, timeout=60)
        except (RuntimeError, TimeoutError) as exc:
            self.kill()
            raise RuntimeError(f"agent did not start: {exc}\n{self.log()}") from exc
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def terminate(self, timeout: float = 60) -> int:
        """SIGTERM (graceful stop); returns the exit code."""
        if not self.alive():
            return self.process.returncode if self.process else 0
        os.killpg(self.process.pid, signal.SIGTERM)
        return self.process.wait(timeout=timeout)

    def kill(self) -> None:
        """SIGKILL the whole process group: a crash, as far as the agent can tell."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)

    def restart(self) -> AgentProcess:
        self.restarts += 1
        return self.start()

    # -- the agent's durable state, read directly (SQLite WAL allows it while it runs)
    def _db(self):
        from ftlct.agent.store.database import Database

        return Database(self.data_dir / "index.sqlite", create=False)

    def results(self) -> list[dict]:
        from ftlct.agent.status import list_results

        if not (self.data_dir / "index.sqlite").exists():
            return []
        db = self._db()
        try:
            return list_results(db)
        finally:
            db.close()

    def status(self) -> dict:
        from ftlct.agent.status import collect_status

        db = self._db()
        try:
            return collect_status(db)
        finally:
            db.close()

    def stored_sop_uids(self) -> set[str]:
        if not (self.data_dir / "index.sqlite").exists():
            return set()
        db = self._db()
        try:
            return {row[0] for row in db.query("SELECT sop_instance_uid FROM instances")}
        finally:
            db.close()


@contextlib.contextmanager
def running_agent(
    workdir: Path,
    model: Path,
    *args: str,
    env: dict[str, str] | None = None,
    data_dir: Path | None = None,
    ae_title: str = "FTLCT",
    port: int | None = None,
) -> Iterator[AgentProcess]:
    """``ftl-agent serve`` on a free loopback port with its own data dir under ``workdir``."""
    workdir.mkdir(parents=True, exist_ok=True)
    agent = AgentProcess(
        data_dir=data_dir or workdir / "agent-data",
        model=model,
        port=port or free_port(),
        args=list(args),
        env={"FTLCT_AGENT_SERIES_QUIET_PERIOD_S": "1", **(env or {})},
        log_path=workdir / "agent.log",
        ae_title=ae_title,
    )
    agent.start()
    try:
        yield agent
    finally:
        try:
            agent.terminate(timeout=30)
        except subprocess.TimeoutExpired:
            agent.kill()


def storescu(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run dcmtk's storescu (by absolute path: pynetdicom installs a same-named script)."""
    program = require_program(STORESCU)
    return subprocess.run(
        [program, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def echoscu(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    program = require_program(ECHOSCU)
    return subprocess.run(
        [program, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


@contextlib.contextmanager
def raw_file_sending() -> Iterator[None]:
    """Make ``send_c_store(path)`` send the file's bytes after its meta, unparsed and unchanged."""
    from pynetdicom import _config

    before = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        yield
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = before


def send_with_pynetdicom(
    paths: list[Path],
    port: int,
    called_ae: str = "FTLCT",
    calling_ae: str = "TESTSCU",
    on_status: Callable[[Path, int | None], None] | None = None,
    timeout_s: float = 10.0,
) -> dict[Path, int | None]:
    """C-STORE each file as stored on disk, over one association (bytes sent unchanged)."""
    import pydicom
    from pynetdicom import AE

    statuses: dict[Path, int | None] = {}
    contexts = {}
    for path in paths:
        meta = pydicom.dcmread(path, stop_before_pixels=True).file_meta
        contexts.setdefault(meta.MediaStorageSOPClassUID, set()).add(meta.TransferSyntaxUID)
    ae = AE(ae_title=calling_ae)
    # A peer that dies mid-association is noticed by these timeouts (pynetdicom's are 30 s+).
    ae.dimse_timeout = ae.network_timeout = ae.acse_timeout = timeout_s
    for sop_class, syntaxes in contexts.items():
        ae.add_requested_context(sop_class, sorted(syntaxes))
    assoc = ae.associate(LOOPBACK, port, ae_title=called_ae)
    if not assoc.is_established:
        raise ConnectionError(f"association with port {port} not established")
    try:
        for path in paths:
            with raw_file_sending():
                status = assoc.send_c_store(path)
            code = int(status.Status) if status and "Status" in status else None
            statuses[path] = code
            if on_status is not None:
                on_status(path, code)
    finally:
        if assoc.is_established:
            assoc.release()
    return statuses


def free_ports(n: int) -> list[int]:
    ports: set[int] = set()
    while len(ports) < n:
        ports.add(free_port())
    return sorted(ports)
