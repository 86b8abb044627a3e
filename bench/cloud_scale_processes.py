"""The processes of the cloud-scale benchmark: a mosquitto, an ``ftl-cloud serve``, and what
``/proc`` says about them (CPU time, peak RSS)."""

from __future__ import annotations

import getpass
import os
import socket
import subprocess
import sys
from pathlib import Path

from ftlct.bench.local_federation import MOSQUITTO, wait_until
from ftlct.cloud.mosquitto_config import max_queued_messages


def start_broker(work: Path, port: int, n_sites: int) -> subprocess.Popen:
    """mosquitto on loopback, queues sized as ``ftl-cloud broker-config`` sizes them for N."""
    conf = work / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\nuser {getpass.getuser()}\n"
        f"max_queued_messages {max_queued_messages(n_sites)}\n"
        "log_dest stderr\nlog_type error\nlog_type warning\nlog_type notice\n"
    )
    log = work / "mosquitto.log"
    broker = _spawn([MOSQUITTO, "-c", str(conf)], log)
    wait_until("mosquitto to listen", lambda: _accepts(port) or broker.poll() is not None, 20, 0.05)
    if broker.poll() is not None:
        raise RuntimeError(f"mosquitto exited: {log.read_text()[-2000:]}")
    return broker


def start_cloud(
    work: Path, state: Path, url: str, weights: Path, n_sites: int, federation: str
) -> subprocess.Popen:
    """``ftl-cloud serve`` (FedAvg) that closes round 1 once all ``n_sites`` have sent
    (and stays up in round 2, so its CPU time and peak RSS can be read)."""
    argv = [sys.executable, "-m", "ftlct.cloud", "serve", "--state-dir", str(state)]
    argv += ["--broker", url, "--federation", federation, "--strategy", "fedavg"]
    argv += ["--initial-weights", str(weights), "--min-sites", str(n_sites)]
    argv += ["--round-timeout", "3600"]
    argv += ["--log-level", "WARNING"]  # one INFO line per update would be the benchmark
    return _spawn(argv, work / "cloud.log")


def _spawn(argv: list[str], log: Path) -> subprocess.Popen:
    with log.open("wb") as handle:
        return subprocess.Popen(
            argv, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
        )


def _accepts(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds the process has used so far (``/proc/PID/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident set (VmHWM), MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")
