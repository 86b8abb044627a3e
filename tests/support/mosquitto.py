"""A real mosquitto on a free loopback port, for tests (cloud, agent, anything MQTT).

    with running_mosquitto(tmp_path) as broker:        # anonymous, plain MQTT
        client.connect(broker.host, broker.port)
    with running_mosquitto(tmp_path, conf_path=conf, port=port) as broker:  # a given config

or the ``mosquitto_broker`` fixture (import it into a conftest). The broker runs
in its own process group and is killed on exit; its log is ``broker.log()``.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.paths import require_program
from tests.support.ports import LOOPBACK, free_port, wait_for_port

MOSQUITTO = "/usr/sbin/mosquitto"


@dataclass
class MosquittoBroker:
    process: subprocess.Popen
    port: int
    conf: Path
    log_path: Path
    tls: bool = False
    host: str = LOOPBACK

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=5)


def plain_config(port: int) -> str:
    """Anonymous MQTT on loopback only. ``user`` keeps a root-started broker as the current user
    (mosquitto would otherwise switch to ``mosquitto``); it has no effect for other users."""
    return (
        f"listener {port} {LOOPBACK}\n"
        "allow_anonymous true\n"
        f"user {getpass.getuser()}\n"
        "log_dest stderr\n"
        "log_type all\n"
    )


@contextlib.contextmanager
def running_mosquitto(
    workdir: Path, conf_path: Path | None = None, port: int | None = None, tls: bool = False
) -> Iterator[MosquittoBroker]:
    """Start mosquitto (a plain anonymous one unless ``conf_path`` + its ``port`` are given)."""
    program = require_program(MOSQUITTO)
    workdir.mkdir(parents=True, exist_ok=True)
    for _attempt in range(3):  # a free port can be taken between probing and binding
        if conf_path is None:
            listen = free_port()
            conf = workdir / f"mosquitto-{listen}.conf"
            conf.write_text(plain_config(listen))
        else:
            if port is None:
                raise ValueError("give the port the config listens on")
            listen, conf = port, conf_path
        log_path = workdir / f"mosquitto-{listen}.log"
        log = log_path.open("wb")
        process = subprocess.Popen(
            [program, "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        broker = MosquittoBroker(process, listen, conf, log_path, tls)
        try:
            wait_for_port(listen, proc=process, timeout=15)
        except RuntimeError:
            if conf_path is not None:
                raise RuntimeError(f"mosquitto exited: {broker.log()}") from None
            continue
        try:
            yield broker
        finally:
            broker.stop()
        return
    raise RuntimeError("mosquitto did not start on a free port after 3 attempts")


@pytest.fixture
def mosquitto_broker(tmp_path) -> Iterator[MosquittoBroker]:
    """A fresh anonymous mosquitto for one test."""
    with running_mosquitto(tmp_path / "mosquitto") as broker:
        yield broker
