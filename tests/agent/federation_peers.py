"""Real peers for federation tests: CLIs as subprocesses, agents wired to a broker and a cloud."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

from ftlct.protocol.mqtt_connection import MqttSettings, new_client, parse_broker_url
from tests.support.dicom_peers import running_agent, storescu
from tests.support.ports import LOOPBACK

FED = "ctfed"

# Fast settings for tests: short quiet period, frequent training checks, quick reconnects.
AGENT_ENV = {
    "FTLCT_AGENT_SERIES_QUIET_PERIOD_S": "1",
    "FTLCT_AGENT_TRAINING_MIN_SAMPLES": "6",
    "FTLCT_AGENT_TRAINING_CHECK_INTERVAL_S": "1",
    "FTLCT_AGENT_MQTT_RECONNECT_MAX_S": "2",
    "FTLCT_AGENT_TWIN_DEBOUNCE_S": "0.5",
}


def agent_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ftlct.agent", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def cloud_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ftlct.cloud", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def agent_status(data_dir: Path) -> dict:
    result = agent_cli("status", "--data-dir", str(data_dir), "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def cloud_status(state_dir: Path) -> dict:
    result = cloud_cli("status", "--state-dir", str(state_dir), "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def enroll(data_dir: Path, site: str, state_dir: Path) -> str:
    """``ftl-agent identity`` then ``ftl-cloud enroll``, as a hospital IT team would."""
    printed = agent_cli("identity", "--data-dir", str(data_dir), "--site", site)
    assert printed.returncode == 0, printed.stderr
    name, key = printed.stdout.strip().split(" ")
    assert name == site and len(printed.stdout.strip().splitlines()) == 1
    enrolled = cloud_cli("enroll", site, key, "--state-dir", str(state_dir))
    assert enrolled.returncode == 0, enrolled.stderr
    return key


def federation_args(broker_url: str, site: str, cloud_key: str) -> list[str]:
    return ["--broker", broker_url, "--site", site, "--federation", FED, "--cloud-key", cloud_key]


def enrolled_agent(
    stack,
    root: Path,
    site: str,
    model_path: Path,
    broker_url: str,
    state_dir: Path,
    cloud_key: str,
    env: dict | None = None,
):
    """A running ``ftl-agent serve`` for ``site`` (work dir ``root/site``), enrolled with the cloud
    of ``state_dir`` and wired to the broker; it stops when ``stack`` closes."""
    data_dir = root / site / "agent-data"
    enroll(data_dir, site, state_dir)
    return stack.enter_context(
        running_agent(
            root / site,
            model_path,
            *federation_args(broker_url, site, cloud_key),
            env=AGENT_ENV if env is None else env,
            data_dir=data_dir,
        )
    )


def send(agent, paths: list[Path]) -> None:
    result = storescu("-aec", agent.ae_title, LOOPBACK, str(agent.port), *map(str, paths))
    assert result.returncode == 0, result.stderr + result.stdout


def send_and_label(root: Path, agents: dict, studies: dict) -> None:
    """Each site's studies over DICOM, every result awaited, then their labels imported."""
    from tests.agent.synthetic_ct import labels_csv
    from tests.support.dicom_peers import wait_for

    for site, agent in agents.items():
        send(agent, [p for s in studies[site] for p in s.paths])
    for site, agent in agents.items():
        expected = len(studies[site])
        wait_for(lambda a=agent, n=expected: len(a.results()) == n, timeout=120)
        csv = labels_csv(root / site / "labels.csv", studies[site])
        imported = agent_cli("label", "import", str(csv), "--data-dir", str(agent.data_dir))
        assert imported.returncode == 0, imported.stderr


def training_slices(agent, model_dir):
    """The slices a site's round covers: its labelled embeddings minus the held-out series
    (the agent's default val_fraction 0.2 and seed 0)."""
    from ftlct.agent.store.database import Database
    from ftlct.agent.training.labelled_data import holdout_split, labelled_data

    db = Database(agent.data_dir / "index.sqlite")
    try:
        data = labelled_data(agent.data_dir, db, model_dir.backbone_sha256, model_dir.labels)
    finally:
        db.close()
    train, _ = holdout_split(data, 0.2, 0)
    return data.take(train)


class Recorder:
    """A subscriber on ``#`` that keeps every payload the broker carries (retained ones too)."""

    def __init__(self, broker_url: str, client_id: str = "recorder"):
        self.client = new_client(client_id, parse_broker_url(broker_url), MqttSettings())
        self.messages: list[tuple[str, bytes, bool]] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe("#", qos=1)
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.client.on_message = self._on_message
        broker = parse_broker_url(broker_url)
        self.client.connect_async(broker.host, broker.port, keepalive=30)
        self.client.reconnect_delay_set(1, 2)
        self.client.loop_start()
        if not self._subscribed.wait(15):
            raise AssertionError("recorder did not subscribe")

    def _on_message(self, client, userdata, message):
        with self._lock:
            self.messages.append((message.topic, bytes(message.payload), bool(message.retain)))

    def payloads(self, topic: str | None = None) -> list[bytes]:
        with self._lock:
            return [p for t, p, _ in self.messages if topic is None or t == topic]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
