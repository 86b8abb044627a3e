"""MQTT transport: the same rounds through a real mosquitto and a real ``ftl-cloud serve``.

Each simulated site is its own MQTT client with its own Ed25519 identity,
enrolled at the cloud with ``ftl-cloud enroll``, and runs the agent's own
federation code (``bench.mqtt_site``). A round goes exactly as in a
deployment: the site's inbox verifies and keeps the retained ``rounds/current``
and its cluster's ``model/{cluster}`` (signatures, kind, pin and labels), its
round planner says when it can train, the learner trains, and the agent's
release seals, signs and queues a ``site_update`` that its outbox sender
publishes (QoS 1);
the cloud validates, aggregates with its strategy, persists, publishes the new
global model(s) and opens the next round. The elapsed time of a round here is
real: slowest site's training plus the broker and cloud round trip.

Two kinds of federation (README "Cloud and protocol"): ``ftl`` federates a
head over the model directory's pinned backbone (``ftl-cloud serve --model``);
``fedavg`` / ``cfl`` (and the last-block FTL variant) federate every tensor of
their network from the learner's initial weights (``--initial-weights``, pinned
by the tensor layout). The results say which transport each method used.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ftlct.agent.sync.model_pin import ModelPin
from ftlct.bench.federation import Transport
from ftlct.bench.mqtt_site import SimulatedSite, TransportError
from ftlct.bench.process_group import stop_process_group
from ftlct.cloud.strategies import SiteUpdate
from ftlct.export.tensors import Weights
from ftlct.protocol.identity import load_or_create_identity
from ftlct.protocol.messages import weights_layout_sha256
from ftlct.protocol.mqtt_connection import parse_broker_url

MOSQUITTO = "/usr/sbin/mosquitto"
LOOPBACK = "127.0.0.1"
KINDS = ("head", "network")
# The in-process transport bounds no update norm and no site's weight; neither does the
# cloud here, so both run the same arithmetic (a rejected update would stall the round
# until the timeout; a bounded share would reweigh small CFL clusters).
UNBOUNDED_DELTA_NORM = 1e9
UNBOUNDED_LIMITS = {"max_delta_norm": UNBOUNDED_DELTA_NORM, "max_site_share": 1.0}


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


class MqttTransport(Transport):
    """``method``'s rounds through a broker and ``ftl-cloud serve --strategy strategy``.

    ``kind`` "head": the cloud starts from the model directory (``--model``) and
    the learner must start from that head; "network": the cloud starts from the
    learner's initial weights (``--initial-weights``), whatever network they are.
    """

    def __init__(
        self, method: str, strategy: str, params: dict, settings, plan, reporter, kind: str
    ):
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        self.method = method
        self.strategy = strategy
        self.params = params
        self.settings = settings
        self.plan = plan
        self.reporter = reporter
        self.kind = kind
        self.federation = f"bench-{method}"
        self.work = Path(settings.out) / "mqtt" / method
        self.state = self.work / "cloud-state"
        self.broker_process: subprocess.Popen | None = None
        self.cloud: subprocess.Popen | None = None
        self.clients: dict[str, SimulatedSite] = {}
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
        if self.kind == "head":
            head = self.plan.model.head_weights()
            if set(head) != set(initial) or any(
                not np.array_equal(head[k], initial[k]) for k in head
            ):
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

    def _starting_point(self, initial: Weights) -> tuple[list[str], ModelPin]:
        """The ``serve`` flags that create the federation, and what its sites accept."""
        labels = list(self.plan.dataset.classes)
        if self.kind == "head":
            model = self.plan.model
            pin = ModelPin("head", model.labels, backbone_sha256=model.backbone_sha256)
            return ["--model", str(model.path)], pin
        from ftlct.cloud.initial_model import write_network_file

        path = self.work / "initial.safetensors"
        arrays = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in initial.items()}
        write_network_file(path, arrays, labels, version="init")
        pin = ModelPin("network", labels, architecture_sha256=weights_layout_sha256(arrays))
        return ["--initial-weights", str(path)], pin

    def _start(self, initial: Weights) -> None:
        url = self._start_broker()
        parse_broker_url(url)  # a bad --broker fails here, before the cloud starts
        state = str(self.state)
        cloud_key = self._cloud_cli("identity", "--state-dir", state).splitlines()[-1].strip()
        identities = {}
        for site in self.plan.site_names:
            identities[site] = load_or_create_identity(self.work / "site-keys", site)
            self._cloud_cli("enroll", site, identities[site].public_b64, "--state-dir", state)
        start_flags, pin = self._starting_point(initial)
        config = self.work / "cloud.toml"
        config.write_text(
            _toml(
                {
                    "tick_s": 0.1,
                    "limits": UNBOUNDED_LIMITS,
                    "strategy_params": self.params,
                }
            )
        )
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
                    *start_flags,
                    "--state-dir",
                    state,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.reporter.note(
            f"mqtt: ftl-cloud serve ({self.strategy}, {self.kind}) on {url}, "
            f"{len(identities)} site clients"
        )
        for index, (site, identity) in enumerate(identities.items()):
            self.clients[site] = SimulatedSite(
                site,
                identity,
                url,
                self.federation,
                cloud_key,
                pin,
                len(self.plan.partition.sites[index]),
                self.work / "sites" / site,
            )
        self._wait_all(1, finished_ok=False)

    def _wait_all(self, round_: int, finished_ok: bool) -> None:
        for client in self.clients.values():
            client.wait(round_, finished_ok, self.settings.mqtt_timeout_s, self._cloud_problem)

    def _cloud_problem(self) -> str | None:
        """Why waiting for the cloud is pointless: it died, or it refused an update."""
        if self.cloud is not None and self.cloud.poll() not in (None, 0):
            last = self._cloud_log()[-400:].strip().splitlines()[-1:] or ["no log"]
            return f"ftl-cloud serve exited with {self.cloud.returncode}: {last[0]}"
        # every site must count for the round to close (--min-sites = all of them)
        refused = [line for line in self._cloud_log().splitlines() if "rejected update" in line]
        if refused:
            detail = refused[0].split("rejected update", 1)[1].strip()
            return f"ftl-cloud serve rejected an update {detail}"
        return None

    def _cloud_log(self) -> str:
        path = self.work / "cloud.log"
        return path.read_text(errors="replace") if path.is_file() else ""

    # ------------------------------------------------------------------ rounds
    def models_for(self, sites: Sequence[str]) -> dict[str, tuple[str, Weights]]:
        out = {}
        for site in sites:
            cluster, model = self.clients[site].current()
            out[site] = (cluster, {k: np.asarray(v, np.float32) for k, v in model.weights.items()})
        return out

    def announced(self, site: str) -> dict:
        return self.clients[site].announced()

    def exchange(self, round_: int, updates: list[SiteUpdate], metrics: dict[str, dict]) -> None:
        for update in updates:
            self.clients[update.site].publish_update(round_, update, metrics.get(update.site, {}))
        self._wait_all(round_ + 1, finished_ok=round_ >= self.settings.rounds)
        self.round = round_ + 1
        self.finished = round_ >= self.settings.rounds

    def describe(self) -> dict:
        """As the in-process transport describes its run, from the cloud's own status."""
        status = json.loads(self._cloud_cli("status", "--state-dir", str(self.state), "--json"))
        membership = {
            site: cluster for cluster, sites in status["clusters"].items() for site in sites
        }
        return {
            "strategy": self.strategy,
            "transport": "mqtt: mosquitto + ftl-cloud serve (subprocess), one MQTT client per site",
            "model_kind": status["model_kind"],
            "clusters": sorted(status["global_versions"]),
            "membership": dict(sorted(membership.items())),
            "splits": status["splits"],
            "final_versions": status["global_versions"],
            "rounds_completed": status["rounds_completed"],
        }

    def close(self) -> None:
        for client in self.clients.values():
            with contextlib.suppress(Exception):
                client.close()
        if self.cloud is not None:
            if self.finished:  # it exits by itself after the last round; give it the time
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.cloud.wait(timeout=15)
            stop_process_group(self.cloud, timeout=10, kill_timeout=10)
        stop_process_group(self.broker_process, timeout=10, kill_timeout=10)


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
