"""MQTT transport: the same rounds through a real mosquitto and a real ``ftl-cloud serve``.

Each simulated site is its own MQTT client with its own Ed25519 identity,
enrolled at the cloud with ``ftl-cloud enroll``. A round goes exactly as in a
deployment: the site reads the retained ``rounds/current`` and its cluster's
``model/{cluster}`` (signatures, backbone and labels checked with
``protocol.exchange``), trains, and publishes a signed ``site_update`` (QoS 1);
the cloud validates, aggregates with its strategy, persists, publishes the new
global head(s) and opens the next round. The elapsed time of a round here is
real: slowest site's training plus the broker and cloud round trip.

The cloud's global model is a head over a pinned backbone (DESIGN.md), so only
head methods (``ftl``) can travel this way; whole-network baselines stay in
process, and the results say which transport each method used.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ftlct.agent.training.local_training import Weights
from ftlct.bench.federation import Transport, wire_metrics
from ftlct.cloud.strategies import SiteUpdate
from ftlct.protocol.errors import ProtocolError
from ftlct.protocol.exchange import build_update, open_global_model, open_round
from ftlct.protocol.identity import load_or_create_identity
from ftlct.protocol.messages import GlobalModel, RoundAnnouncement
from ftlct.protocol.mqtt_connection import MqttSettings, new_client, parse_broker_url, start
from ftlct.protocol.topics import Topics

MOSQUITTO = "/usr/sbin/mosquitto"
LOOPBACK = "127.0.0.1"


class TransportError(RuntimeError):
    """The broker or the cloud did not do its part in time."""


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def _wait_for_port(port: int, process: subprocess.Popen, timeout: float = 15.0) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise TransportError(f"mosquitto exited with {process.returncode}")
        with contextlib.suppress(OSError), socket.create_connection((LOOPBACK, port), timeout=0.5):
            return
        time.sleep(0.05)
    raise TransportError(f"mosquitto is not listening on {port} after {timeout} s")


def _stop(process: subprocess.Popen | None, timeout: float = 10.0) -> None:
    """SIGTERM the process group, SIGKILL if it lingers."""
    if process is None or process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=timeout)


class SiteClient:
    """One site's MQTT connection: keeps the latest verified round and global models."""

    def __init__(self, site: str, identity, broker, federation: str, cloud_key: str, model) -> None:
        self.site = site
        self.identity = identity
        self.federation = federation
        self.topics = Topics(federation)
        self.cloud_key = cloud_key
        self.backbone = model.backbone_sha256
        self.labels = model.labels
        self.round: RoundAnnouncement | None = None
        self.models: dict[str, GlobalModel] = {}
        self.errors: list[str] = []
        self.changed = threading.Condition()
        self.client = new_client(f"bench-{federation}-{site}", broker, MqttSettings())
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        start(self.client, broker, MqttSettings(), persistent=False)

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if not reason_code.is_failure:
            client.subscribe([(self.topics.rounds_current, 1), (self.topics.all_models, 1)])

    def _on_message(self, client, userdata, message) -> None:
        if not message.payload:
            return  # a cleared retained model (a dissolved cluster)
        try:
            if message.topic == self.topics.rounds_current:
                announcement = open_round(message.payload, self.cloud_key, self.federation)
                with self.changed:
                    self.round = announcement
                    self.changed.notify_all()
            else:
                model = open_global_model(
                    message.payload,
                    self.cloud_key,
                    self.federation,
                    backbone_sha256=self.backbone,
                    labels=self.labels,
                )
                with self.changed:
                    self.models[model.cluster] = model
                    self.changed.notify_all()
        except ProtocolError as exc:
            self.errors.append(f"{message.topic}: {exc}")

    def ready_for(self, round_: int, finished_ok: bool) -> bool:
        """Round ``round_`` is announced (or the run finished) and this site's base model is here."""
        ann = self.round
        if ann is None:
            return False
        if not (ann.round == round_ and ann.status == "open") and not (
            finished_ok and ann.status == "finished" and ann.round >= round_ - 1
        ):
            return False
        model = self.models.get(ann.cluster_for(self.site))
        return model is not None and model.version == ann.base_version_for(self.site)

    def wait(self, round_: int, finished_ok: bool, timeout: float, problem=lambda: None) -> None:
        """Block until ``ready_for``; ``problem()`` returning a reason (the cloud died) ends it early."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while not self.ready_for(round_, finished_ok):
                left = deadline - time.monotonic()
                reason = problem()
                if reason:
                    raise TransportError(reason)
                if left <= 0:
                    raise TransportError(
                        f"{self.site}: no round {round_} and its model from the cloud after {timeout:.0f} s"
                        + (f" ({self.errors[-1]})" if self.errors else "")
                    )
                self.changed.wait(min(left, 0.5))

    def current(self) -> tuple[str, GlobalModel]:
        cluster = self.round.cluster_for(self.site)
        return cluster, self.models[cluster]

    def publish_update(self, round_: int, update: SiteUpdate, metrics: dict) -> int:
        cluster, model = self.current()
        data = build_update(
            self.identity,
            self.federation,
            round=round_,
            base_version=model.version,
            cluster=cluster,
            n_samples=update.n_samples,
            delta=update.delta,
            metrics=wire_metrics(metrics),
        )
        info = self.client.publish(self.topics.updates(self.site), data, qos=1)
        info.wait_for_publish(timeout=60)
        if not info.is_published():
            raise TransportError(f"{self.site}: the broker did not acknowledge its update")
        return len(data)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class MqttTransport(Transport):
    def __init__(self, strategy: str, params: dict, settings, plan, reporter):
        self.strategy = strategy
        self.params = params
        self.settings = settings
        self.plan = plan
        self.reporter = reporter
        self.federation = f"bench-{strategy}"
        self.work = Path(settings.out) / "mqtt" / strategy
        self.broker_process: subprocess.Popen | None = None
        self.cloud: subprocess.Popen | None = None
        self.clients: dict[str, SiteClient] = {}
        self.round = 1
        self.finished = False  # the cloud completed every round (it then exits by itself)

    # ------------------------------------------------------------------ set-up
    def _cloud_cli(self, *args: str) -> str:
        result = subprocess.run(
            [sys.executable, "-m", "ftlct.cloud", *args],
            capture_output=True,
            text=True,
            timeout=120,
        )
        if result.returncode != 0:
            raise TransportError(f"ftl-cloud {args[0]} failed: {result.stderr.strip()[-300:]}")
        return result.stdout.strip()

    def _start_broker(self) -> str:
        if self.settings.broker:
            return self.settings.broker
        if not Path(MOSQUITTO).is_file():
            raise TransportError(f"--transport mqtt needs {MOSQUITTO} (Debian package mosquitto)")
        port = _free_port()
        conf = self.work / "mosquitto.conf"
        conf.write_text(
            f"listener {port} {LOOPBACK}\nallow_anonymous true\nuser {getpass.getuser()}\n"
            "log_dest stderr\n"
        )
        with open(self.work / "mosquitto.log", "wb") as log:
            self.broker_process = subprocess.Popen(
                [MOSQUITTO, "-c", str(conf)],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        _wait_for_port(port, self.broker_process)
        return f"mqtt://{LOOPBACK}:{port}"

    def start(self, initial: Weights) -> None:
        head = self.plan.model.head_weights()
        if set(head) != set(initial) or any(not np.array_equal(head[k], initial[k]) for k in head):
            raise TransportError(
                "the cloud starts from the model directory's head; the learner does not"
            )
        if self.work.exists():
            import shutil

            shutil.rmtree(self.work)
        self.work.mkdir(parents=True)
        try:
            self._start(initial)
        except BaseException:
            self.close()
            raise

    def _start(self, initial: Weights) -> None:
        url = self._start_broker()
        broker = parse_broker_url(url)
        state = self.work / "cloud-state"
        cloud_key = self._cloud_cli("identity", "--state-dir", str(state)).splitlines()[-1].strip()
        identities = {}
        for site in self.plan.site_names:
            identities[site] = load_or_create_identity(self.work / "site-keys", site)
            self._cloud_cli("enroll", site, identities[site].public_b64, "--state-dir", str(state))
        config = self.work / "cloud.toml"
        config.write_text(_toml({"tick_s": 0.1, "strategy_params": self.params}))
        with open(self.work / "cloud.log", "wb") as log:
            self.cloud = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "ftlct.cloud",
                    "serve",
                    "--config",
                    str(config),
                    "--broker",
                    url,
                    "--federation",
                    self.federation,
                    "--strategy",
                    self.strategy,
                    "--min-sites",
                    str(len(self.plan.site_names)),
                    "--rounds",
                    str(self.settings.rounds),
                    "--round-timeout",
                    "600",
                    "--model",
                    str(self.plan.model.path),
                    "--state-dir",
                    str(state),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.reporter.note(
            f"mqtt: ftl-cloud serve ({self.strategy}) on {url}, {len(identities)} site clients"
        )
        for site, identity in identities.items():
            self.clients[site] = SiteClient(
                site, identity, broker, self.federation, cloud_key, self.plan.model
            )
        self._wait_all(1, finished_ok=False)

    def _wait_all(self, round_: int, finished_ok: bool) -> None:
        for client in self.clients.values():
            client.wait(round_, finished_ok, self.settings.mqtt_timeout_s, self._cloud_problem)

    def _cloud_problem(self) -> str | None:
        if self.cloud is not None and self.cloud.poll() not in (None, 0):
            last = self._cloud_log().strip().splitlines()[-1:] or ["no log"]
            return f"ftl-cloud serve exited with {self.cloud.returncode}: {last[0]}"
        return None

    def _cloud_log(self) -> str:
        path = self.work / "cloud.log"
        return path.read_text(errors="replace")[-400:] if path.is_file() else ""

    # ------------------------------------------------------------------ rounds
    def models_for(self, sites: Sequence[str]) -> dict[str, tuple[str, Weights]]:
        out = {}
        for site in sites:
            cluster, model = self.clients[site].current()
            out[site] = (cluster, {k: np.asarray(v, np.float32) for k, v in model.weights.items()})
        return out

    def exchange(self, round_: int, updates: list[SiteUpdate], metrics: dict[str, dict]) -> None:
        for update in updates:
            self.clients[update.site].publish_update(round_, update, metrics.get(update.site, {}))
        self._wait_all(round_ + 1, finished_ok=round_ >= self.settings.rounds)
        self.round = round_ + 1
        self.finished = round_ >= self.settings.rounds

    def describe(self) -> dict:
        any_client = next(iter(self.clients.values()), None)
        ann = any_client.round if any_client else None
        return {
            "strategy": self.strategy,
            "transport": "mqtt: mosquitto + ftl-cloud serve (subprocess), one MQTT client per site",
            "clusters": sorted(any_client.models) if any_client else [],
            "membership": dict(ann.assignments) if ann else {},
            "splits": [],
            "final_versions": dict(ann.base_versions) if ann else {},
        }

    def close(self) -> None:
        for client in self.clients.values():
            with contextlib.suppress(Exception):
                client.close()
        if self.cloud is not None:
            if self.finished:  # it exits by itself after the last round; give it the time
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.cloud.wait(timeout=15)
            _stop(self.cloud)
        _stop(self.broker_process)


def _toml(data: dict) -> str:
    """A tiny TOML writer for the cloud's settings (scalars and one level of tables)."""

    def value(v) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int | float):
            return repr(v)
        return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'

    lines, tables = [], []
    for key, v in data.items():
        if isinstance(v, dict):
            tables.append((key, v))
        elif v is not None:
            lines.append(f"{key} = {value(v)}")
    for name, table in tables:
        lines.append(f"[{name}]")
        lines += [f"{k} = {value(v)}" for k, v in table.items() if v is not None]
    return "\n".join(lines) + "\n"
