"""One simulated site on MQTT: the retained round and models it follows, the updates it sends.

What an ``ftl-agent`` does on the wire, without its DICOM side: every global
model is verified with ``protocol.exchange`` (cloud signature, kind, pin,
labels) before the site trains from it, and each update is a signed
``site_update`` published QoS 1 and waited for.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from ftlct.bench.federation import wire_metrics
from ftlct.cloud.strategies import SiteUpdate
from ftlct.protocol.errors import ProtocolError
from ftlct.protocol.exchange import build_update, open_global_model, open_round
from ftlct.protocol.messages import GlobalModel, RoundAnnouncement
from ftlct.protocol.mqtt_connection import MqttSettings, new_client, start
from ftlct.protocol.topics import Topics


class TransportError(RuntimeError):
    """The broker or the cloud did not do its part in time."""


@dataclass(frozen=True)
class ModelPin:
    """What a site accepts as a global model: its kind, pin and labels."""

    kind: str  # "head" | "network"
    labels: list[str]
    backbone_sha256: str | None = None  # head
    architecture_sha256: str | None = None  # network

    def open(self, payload: bytes, cloud_key: str, federation: str) -> GlobalModel:
        return open_global_model(
            payload,
            cloud_key,
            federation,
            kind=self.kind,
            backbone_sha256=self.backbone_sha256,
            architecture_sha256=self.architecture_sha256,
            labels=self.labels,
        )


class SiteClient:
    """One site's MQTT connection: keeps the latest verified round and global models."""

    def __init__(
        self, site: str, identity, broker, federation: str, cloud_key: str, pin: ModelPin
    ) -> None:
        self.site = site
        self.identity = identity
        self.federation = federation
        self.topics = Topics(federation)
        self.cloud_key = cloud_key
        self.pin = pin
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
        if not message.payload:  # a cleared retained model: a cluster CFL split up
            with self.changed:
                self.models.pop(message.topic.rsplit("/", 1)[-1], None)
            return
        try:
            if message.topic == self.topics.rounds_current:
                announcement = open_round(message.payload, self.cloud_key, self.federation)
                with self.changed:
                    self.round = announcement
                    self.changed.notify_all()
            else:
                model = self.pin.open(message.payload, self.cloud_key, self.federation)
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
