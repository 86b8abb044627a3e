"""Many light simulated sites over one MQTT connection: own Ed25519 keys, enrolled, one update each.

What a fleet looks like to the cloud (each update signed by its own site, on
its own topic), without a process or a model per site. Each update is
published once and never resent: anything lost on the way stays lost, so a
test sees whether the cloud really received every one.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ftlct.cloud.state import StateStore
from ftlct.protocol import exchange
from ftlct.protocol.identity import Identity, public_b64_of
from ftlct.protocol.mqtt_connection import MqttSettings, new_client, parse_broker_url
from ftlct.protocol.topics import Topics
from tests.cloud.harness import DIM


def site_value(index: int) -> float:
    """Site ``index``'s delta fills every tensor with this value (mean over 0..n-1 is known)."""
    return float(index % 5)  # mean 2.0 whenever n is a multiple of 5


@dataclass
class LightFleet:
    federation: str
    count: int
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
            value = site_value(index)
            delta = {
                "dense.0.weight": np.full((2, DIM), value, np.float32),
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

    def publish_once(self, updates: dict[str, bytes], timeout: float = 120.0) -> float:
        """Publish every update once (QoS 1, never resent); seconds until the broker had them all."""
        started = time.monotonic()
        infos = [
            self.client.publish(self.topics.updates(site), data, qos=1)
            for site, data in updates.items()
        ]
        for info in infos:
            info.wait_for_publish(max(1.0, timeout - (time.monotonic() - started)))
        return time.monotonic() - started

    def received_receipts(self) -> list[bytes]:
        with self._lock:
            return list(self.receipts)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
