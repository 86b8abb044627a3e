"""A whole federation on one machine: mosquitto, ``ftl-cloud serve`` and N ``ftl-agent serve``.

Every part is the real program in its own process, talking DICOM and MQTT over
loopback, exactly as on a hospital's edge boxes and in the cloud; only the
addresses and the short timers differ. Used by ``make demo``.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from pydicom import dcmread
from pynetdicom import AE

from ftlct.bench.process_group import stop_process_group

LOOPBACK = "127.0.0.1"
MOSQUITTO = "/usr/sbin/mosquitto"

# Short timers so a demo finishes in minutes; production keeps the defaults.
FAST_AGENT_ENV = {
    "FTLCT_AGENT_SERIES_QUIET_PERIOD_S": "1",
    "FTLCT_AGENT_TRAINING_CHECK_INTERVAL_S": "1",
    "FTLCT_AGENT_TRAINING_MIN_SAMPLES": "8",
    "FTLCT_AGENT_TWIN_DEBOUNCE_S": "1",
    "FTLCT_AGENT_MQTT_RECONNECT_MAX_S": "2",
}


class FederationError(RuntimeError):
    """A part of the local federation did not start or did not answer in time."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def wait_until(what: str, check: Callable[[], object], timeout: float, interval: float = 0.5):
    """Poll ``check`` until it returns something truthy; raise ``FederationError`` naming ``what``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval)
    raise FederationError(f"timed out after {timeout:.0f}s waiting for {what}")


def _cli(module: str, *args: str, timeout: float = 120) -> str:
    result = subprocess.run(
        [sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=timeout
    )
    if result.returncode != 0:
        raise FederationError(
            f"{module} {args[0]}: {result.stderr.strip() or result.stdout.strip()}"
        )
    return result.stdout


def agent_cli(*args: str) -> str:
    return _cli("ftlct.agent", *args)


def cloud_cli(*args: str) -> str:
    return _cli("ftlct.cloud", *args)


@dataclass
class Process:
    name: str
    popen: subprocess.Popen
    log: Path

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, lines: int = 15) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 20) -> None:
        stop_process_group(self.popen, timeout, kill_timeout=5)


def _die_with_parent() -> None:
    """In the child: take SIGTERM when the demo dies, even by SIGKILL (Linux prctl)."""
    import ctypes

    PR_SET_PDEATHSIG = 1
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _spawn(name: str, argv: list[str], log: Path, env: dict[str, str] | None = None) -> Process:
    log.parent.mkdir(parents=True, exist_ok=True)
    handle = open(log, "wb")  # noqa: SIM115 - the child owns it for its lifetime
    popen = subprocess.Popen(
        argv,
        stdout=handle,
        stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {})},
        start_new_session=True,
        preexec_fn=_die_with_parent,  # no orphans if the demo is killed
    )
    handle.close()
    return Process(name, popen, log)


@dataclass
class Agent:
    site: str
    data_dir: Path
    port: int
    process: Process
    ae_title: str = "FTLCT"

    def status(self) -> dict:
        return json.loads(agent_cli("status", "--data-dir", str(self.data_dir), "--json"))

    def results(self) -> list[dict]:
        return json.loads(agent_cli("results", "--data-dir", str(self.data_dir), "--json"))

    def send(self, paths: Iterable[Path], calling_ae: str = "DEMOPACS") -> int:
        """C-STORE files in one association, as a PACS would; returns how many were accepted."""
        paths = list(paths)
        ae = AE(ae_title=calling_ae)
        metas = [dcmread(p, stop_before_pixels=True).file_meta for p in paths]
        for sop_class, syntax in {(m.MediaStorageSOPClassUID, m.TransferSyntaxUID) for m in metas}:
            ae.add_requested_context(sop_class, [syntax])
        assoc = ae.associate(LOOPBACK, self.port, ae_title=self.ae_title)
        if not assoc.is_established:
            raise FederationError(f"{self.site}: association refused")
        accepted = 0
        try:
            for path in paths:
                status = assoc.send_c_store(dcmread(path))
                accepted += int(getattr(status, "Status", -1) == 0)
        finally:
            assoc.release()
        return accepted


@dataclass
class LocalFederation:
    """Start with ``with LocalFederation(...) as fed:``; everything stops on exit."""

    workdir: Path
    model_dir: Path
    sites: list[str]
    rounds: int = 3
    federation: str = "demo"
    strategy: str = "ftl"
    round_timeout_s: float = 120.0
    agent_env: dict[str, str] = field(default_factory=dict)
    processes: list[Process] = field(default_factory=list)
    agents: dict[str, Agent] = field(default_factory=dict)
    broker_url: str = ""
    cloud_state: Path = Path()
    cloud: Process | None = None

    def __enter__(self) -> LocalFederation:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop()

    # ------------------------------------------------------------------ start-up
    def _start(self) -> None:
        if not Path(MOSQUITTO).is_file():
            raise FederationError(f"{MOSQUITTO} not found: install the Debian package mosquitto")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._start_broker()
        self.cloud_state = self.workdir / "cloud"
        cloud_key = cloud_cli("identity", "--state-dir", str(self.cloud_state)).strip()
        for site in self.sites:
            data_dir = self.workdir / site
            site_id, public_key = agent_cli(
                "identity", "--data-dir", str(data_dir), "--site", site
            ).split()
            cloud_cli("enroll", site_id, public_key, "--state-dir", str(self.cloud_state))
        self.cloud = _spawn(
            "cloud",
            [
                sys.executable, "-m", "ftlct.cloud", "serve", "--broker", self.broker_url,
                "--federation", self.federation, "--strategy", self.strategy,
                "--min-sites", str(len(self.sites)), "--rounds", str(self.rounds),
                "--round-timeout", str(self.round_timeout_s), "--model", str(self.model_dir),
                "--state-dir", str(self.cloud_state),
            ],
            self.workdir / "logs" / "cloud.log",
        )  # fmt: skip
        self.processes.append(self.cloud)
        for site in self.sites:
            self._start_agent(site, cloud_key)
        for agent in self.agents.values():
            wait_until(f"{agent.site} to answer C-ECHO", lambda a=agent: _echo(a), 60)

    def _start_broker(self) -> None:
        port = free_port()
        conf = self.workdir / "mosquitto.conf"
        # `user` keeps a root-started broker as this user instead of switching to `mosquitto`.
        conf.write_text(
            f"listener {port} {LOOPBACK}\nallow_anonymous true\nuser {getpass.getuser()}\n"
            "persistence false\nlog_dest stderr\n"
        )
        broker = _spawn(
            "mosquitto", [MOSQUITTO, "-c", str(conf)], self.workdir / "logs" / "mosquitto.log"
        )
        self.processes.append(broker)
        wait_until("mosquitto to listen", lambda: _accepts(port) or not broker.alive(), 20, 0.1)
        if not broker.alive():
            raise FederationError(f"mosquitto exited: {broker.tail()}")
        self.broker_url = f"mqtt://{LOOPBACK}:{port}"

    def _start_agent(self, site: str, cloud_key: str) -> None:
        port = free_port()
        data_dir = self.workdir / site
        process = _spawn(
            f"agent {site}",
            [
                sys.executable, "-m", "ftlct.agent", "serve", "--data-dir", str(data_dir),
                "--port", str(port), "--model", str(self.model_dir), "--broker", self.broker_url,
                "--site", site, "--federation", self.federation, "--cloud-key", cloud_key,
            ],
            self.workdir / "logs" / f"agent-{site}.log",
            env={**FAST_AGENT_ENV, **self.agent_env},
        )  # fmt: skip
        self.processes.append(process)
        self.agents[site] = Agent(site, data_dir, port, process)

    # ------------------------------------------------------------------ queries
    def cloud_status(self) -> dict:
        return json.loads(cloud_cli("status", "--state-dir", str(self.cloud_state), "--json"))

    def check_alive(self) -> None:
        for process in self.processes:
            if not process.alive() and process is not self.cloud:
                raise FederationError(f"{process.name} exited:\n{process.tail()}")


def _accepts(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((LOOPBACK, port), timeout=0.5):
        return True
    return False


def _echo(agent: Agent) -> bool:
    if not agent.process.alive():
        raise FederationError(f"agent {agent.site} exited:\n{agent.process.tail()}")
    ae = AE(ae_title="DEMOPACS")
    ae.add_requested_context("1.2.840.10008.1.1")
    assoc = ae.associate(LOOPBACK, agent.port, ae_title=agent.ae_title)
    if not assoc.is_established:
        return False
    status = assoc.send_c_echo()
    assoc.release()
    return getattr(status, "Status", None) == 0


def remove_tree(path: Path) -> None:
    if path.exists():
        shutil.rmtree(path)
