"""Many light simulated sites over one MQTT connection: own Ed25519 keys, enrolled, one update each.

Used by the cloud's delivery tests and the cloud-scale benchmark (``cloud_scale.py``).

What a fleet looks like to the cloud (each update signed by its own site, on
its own topic), without a process or a model per site. Each update is
published once and never resent: anything lost on the way stays lost, so a
test sees whether the cloud really received every one.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ftlct.cloud.state import StateStore
from ftlct.cloud.state.inbox import INBOX_DB
from ftlct.protocol import exchange
from ftlct.protocol.identity import Identity, public_b64_of
from ftlct.protocol.mqtt_connection import MqttSettings, new_client, parse_broker_url
from ftlct.protocol.topics import Topics


def site_value(index: int, scale: float = 1.0) -> float:
    """Site ``index``'s delta fills every tensor with this value (mean over 0..n-1 is known)."""
    return float(index % 5) * scale  # mean 2.0 * scale whenever n is a multiple of 5


@dataclass
class LightFleet:
    federation: str
    count: int
    dim: int = 4  # the head is a dim -> 2 linear layer (the agent's is 1280 -> 2)
    codec: str = "fp32"
    scale: float = (
        1.0  # of every delta value (a wide head needs small values to pass the norm bound)
    )
    identities: list[Identity] = field(default_factory=list)

    def __post_init__(self) -> None:
        for index in range(self.count):
            private = Ed25519PrivateKey.generate()
            self.identities.append(Identity(f"s{index:05d}", private, public_b64_of(private)))

    def enroll(self, store: StateStore) -> None:
        with store.transaction():  # one commit for the whole fleet
            for identity in self.identities:
                store.sites.enroll(identity.name, identity.public_b64)

    def updates(self, round_: int, base: str) -> dict[str, bytes]:
        """site -> its signed update for ``round_``."""
        out = {}
        for index, identity in enumerate(self.identities):
            value = site_value(index, self.scale)
            delta = {
                "dense.0.weight": np.full((2, self.dim), value, np.float32),
                "dense.0.bias": np.full(2, value, np.float32),
            }
            out[identity.name] = exchange.build_update(
                identity,
                self.federation,
                round=round_,
                base_version=base,
                cluster="global",
                n_samples=10,
                delta=delta,
                codec=self.codec,
            )
        return out


class FleetConnection:
    """One MQTT connection publishing for every site and collecting the receipts sent back."""

    def __init__(self, broker_url: str, federation: str):
        self.topics = Topics(federation)
        self.broker = parse_broker_url(broker_url)
        self.client = new_client("light-fleet", self.broker, MqttSettings())
        self.receipts: list[bytes] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *args: self._subscribed.set()

    def _on_message(self, client, userdata, message) -> None:
        with self._lock:
            self.receipts.append(bytes(message.payload))

    def connect(self) -> FleetConnection:
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        properties = Properties(PacketTypes.CONNECT)
        properties.ReceiveMaximum = 65535  # a test client that can take every receipt at once
        self.client.connect(self.broker.host, self.broker.port, properties=properties)
        self.client.loop_start()
        self.client.subscribe(f"{self.topics.root}/receipts/+", qos=1)
        if not self._subscribed.wait(10):
            raise AssertionError("no SUBACK for the receipts")
        return self

    def publish_once(
        self,
        updates: dict[str, bytes],
        stored: Callable[[], int],
        window: int = 500,
        timeout: float = 120.0,
    ) -> float:
        """Publish every update once (QoS 1, never resent), paced by what the cloud ``stored``;
        seconds until the broker had them all."""
        started = time.monotonic()
        messages = [(self.topics.updates(site), data, False) for site, data in updates.items()]
        paced_publish(self.client, messages, stored, window, timeout)
        return time.monotonic() - started

    def received_receipts(self) -> list[bytes]:
        with self._lock:
            return list(self.receipts)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def stored_by(state_dir) -> Callable[[], int]:
    """How many messages the cloud in ``state_dir`` has made durable so far (its inbox ids)."""
    path = Path(state_dir) / INBOX_DB

    def count() -> int:
        if not path.is_file():
            return 0
        with contextlib.closing(sqlite3.connect(path, timeout=30)) as db:
            row = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'inbox'").fetchone()
        return int(row[0]) if row else 0

    return count


def paced_publish(client, messages, stored: Callable[[], int], window: int, timeout: float):
    """Publish ``(topic, payload, retain)`` in order, QoS 1, each once, with at most ``window``
    not yet durable at the cloud: many sites sending at a rate one subscriber can read, rather
    than one loop bursting faster than any Python MQTT client reads its socket (mosquitto drops
    what piles up unwritten beyond max_queued_messages)."""
    deadline = time.monotonic() + timeout
    infos, done = [], 0
    for index, (topic, payload, retain) in enumerate(messages):
        while index - done >= window:
            if time.monotonic() > deadline:
                raise AssertionError(f"the cloud stored {done} of {index} messages in time")
            time.sleep(0.005)
            done = stored()
        infos.append(client.publish(topic, payload, qos=1, retain=retain))
    for info in infos:
        info.wait_for_publish(max(1.0, deadline - time.monotonic()))
