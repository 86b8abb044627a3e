"""Test helpers for the cloud: a tiny model directory, scripted sites, the cloud as a subprocess."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from ftlct.cloud import initial_model
from ftlct.cloud.state import StateStore
from ftlct.cloud.status_report import status_report
from ftlct.export.files import atomic_write_bytes, sha256_file
from ftlct.export.model_dir import FORMAT, MANIFEST, ModelDir, write_head_files
from ftlct.export.preprocessing import PreprocessingSpec
from ftlct.protocol import exchange
from ftlct.protocol.identity import Identity, load_or_create_identity
from ftlct.protocol.mqtt_connection import MqttSettings, new_client, parse_broker_url
from ftlct.protocol.topics import Topics

DIM = 4
FED = "testfed"


def make_tiny_model(out: Path, weight: float = 0.0, version: str = "v0") -> ModelDir:
    """A model directory with a 4-d 'backbone' (a placeholder file) and a linear 2-class head.

    The cloud reads only the manifest, the backbone hash and the head weights,
    so this stands in for a real MobileNet directory and keeps numbers small.
    """
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "backbone.onnx", b"placeholder backbone for cloud tests")
    manifest = {
        "format": FORMAT,
        "version": version,
        "labels": ["normal", "abnormal"],
        "backbone": {
            "file": "backbone.onnx",
            "sha256": sha256_file(out / "backbone.onnx"),
            "output": {"name": "embedding", "dim": DIM},
        },
        "head": {},
        "preprocessing": PreprocessingSpec(input_size=32).to_json(),
        "provenance": {"backbone": "test placeholder"},
    }
    head = {
        "dense.0.weight": np.full((2, DIM), weight, np.float32),
        "dense.0.bias": np.zeros(2, np.float32),
    }
    write_head_files(out, manifest, head, trained=False)
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return ModelDir.load(out)


def delta(w: float, b: tuple[float, float]) -> dict[str, np.ndarray]:
    return {
        "dense.0.weight": np.full((2, DIM), w, np.float32),
        "dense.0.bias": np.array(b, np.float32),
    }


# A stand-in whole network (conv, batch norm statistics, classifier): what a conventional-FL
# federation moves, with nothing in it a head federation would accept.
NETWORK_SHAPES = {
    "features.0.weight": (2, 1, 3, 3),
    "features.1.running_var": (2,),
    "classifier.weight": (2, 2),
    "classifier.bias": (2,),
}


def network(value: float = 0.0) -> dict[str, np.ndarray]:
    """Every tensor of the stand-in network filled with ``value``."""
    return {name: np.full(shape, value, np.float32) for name, shape in NETWORK_SHAPES.items()}


def write_network_file(
    path: Path, weights: dict[str, np.ndarray], labels=("normal", "abnormal"), version=None
) -> Path:
    """An ``--initial-weights`` file (the cloud's own writer, test labels by default)."""
    return initial_model.write_network_file(path, weights, labels, version)


def wait_until(predicate, timeout: float = 60.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class MqttPeer:
    """A paho client that records every message it receives (topic -> list of payloads)."""

    def __init__(self, client_id: str, broker_url: str, settings: MqttSettings | None = None):
        self.broker = parse_broker_url(broker_url)
        self.client = new_client(client_id, self.broker, settings or MqttSettings())
        self.received: dict[str, list[bytes]] = {}
        self.connect_result = None
        self._lock = threading.Lock()
        self._connected = threading.Event()
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        self.connect_result = reason_code
        self._connected.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties):
        if not self._connected.is_set():  # dropped before any CONNACK (e.g. TLS refused)
            self.connect_result = reason_code
            self._connected.set()

    def _on_message(self, client, userdata, message):
        with self._lock:
            self.received.setdefault(message.topic, []).append(bytes(message.payload))

    def connect(self, timeout: float = 15.0) -> MqttPeer:
        """Connect and wait for the CONNACK; ``ConnectionRefusedError`` if the broker says no
        or drops the connection first (the client then stops retrying)."""
        try:
            self.client.connect(self.broker.host, self.broker.port, keepalive=30)
        except OSError as exc:  # includes ssl.SSLError from the handshake
            raise ConnectionRefusedError(f"connect failed: {exc}") from exc
        self.client.loop_start()
        if not self._connected.wait(timeout):
            self.client.loop_stop()
            raise AssertionError("no CONNACK")
        if self.connect_result.is_failure:
            self.client.loop_stop()
            raise ConnectionRefusedError(str(self.connect_result))
        return self

    def subscribe(self, topic: str) -> None:
        done = threading.Event()
        self.client.on_subscribe = lambda *args: done.set()
        self.client.subscribe(topic, qos=1)
        if not done.wait(10):
            raise AssertionError(f"no SUBACK for {topic}")

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        info.wait_for_publish(10)

    def messages(self, topic: str) -> list[bytes]:
        with self._lock:
            return list(self.received.get(topic, []))

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class ScriptedSite(MqttPeer):
    """What an agent does on the wire, scripted: sign updates, read verified global models."""

    def __init__(
        self, name: str, keys_dir: Path, broker_url: str, settings: MqttSettings | None = None
    ):
        super().__init__(f"site-{name}", broker_url, settings)
        self.identity: Identity = load_or_create_identity(keys_dir / name, name)
        self.topics = Topics(FED)

    def update(self, round_: int, base: str, d, n: int, cluster: str = "global", **kwargs) -> bytes:
        return exchange.build_update(
            self.identity,
            FED,
            round=round_,
            base_version=base,
            cluster=cluster,
            n_samples=n,
            delta=d,
            **kwargs,
        )

    def send(self, payload: bytes) -> None:
        self.publish(self.topics.updates(self.identity.name), payload)

    def global_model(
        self, cloud_key: str, cluster: str = "global", backbone: str | None = None, **pins
    ):
        """The last retained model on ``model/{cluster}`` (None if none, or cleared), verified."""
        payloads = self.messages(self.topics.model(cluster))
        if not payloads or not payloads[-1]:
            return None
        return exchange.open_global_model(
            payloads[-1], cloud_key, FED, backbone_sha256=backbone, **pins
        )

    def round(self, cloud_key: str):
        payloads = self.messages(self.topics.rounds_current)
        return exchange.open_round(payloads[-1], cloud_key, FED) if payloads else None


class CloudProcess:
    """``python -m ftlct.cloud serve`` in its own process group, logging to a file."""

    def __init__(self, state_dir: Path, args: list[str], env: dict[str, str] | None = None):
        self.state_dir = state_dir
        self.args = args
        self.env = {**os.environ, "FTLCT_CLOUD_TICK_S": "0.1", **(env or {})}
        self.log_path = state_dir.parent / f"{state_dir.name}-cloud.log"
        self.process: subprocess.Popen | None = None

    def start(self) -> CloudProcess:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "ftlct.cloud",
                    "serve",
                    "--state-dir",
                    str(self.state_dir),
                    *self.args,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                start_new_session=True,
            )
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def status(self) -> dict:
        store = StateStore.open_existing(self.state_dir)
        if store is None:
            return {}
        try:
            return status_report(store)
        finally:
            store.close()

    def wait_status(self, predicate, timeout: float = 60.0, what: str = "cloud status"):
        def check():
            if (
                self.process is not None
                and self.process.poll() is not None
                and not predicate(self.status())
            ):
                raise AssertionError(f"cloud exited with {self.process.returncode}:\n{self.log()}")
            return predicate(self.status())

        try:
            return wait_until(check, timeout, what)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n--- cloud log ---\n{self.log()[-4000:]}") from None

    def kill(self) -> None:
        """SIGKILL: no handler runs, nothing is flushed."""
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()
