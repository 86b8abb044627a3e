"""The agent's one MQTT connection: subscriptions, an inbox, and publishes tracked to their PUBACK.

paho's network thread only queues: messages go to ``inbox``, acknowledgements
to ``acks`` (mid, failed, reason), connection changes to ``inbox`` as
``("connected", None)`` / ``("disconnected", reason)``. The sync loop does the
work, so a slow model install never stalls keepalives. paho keeps QoS 1
messages that were not acknowledged and resends them (same mid) after a
reconnect; the durable copy is the caller's outbox.
"""

from __future__ import annotations

import logging
import queue
import threading

import paho.mqtt.client as mqtt

from ftlct.agent.logs import log_event
from ftlct.protocol.mqtt_connection import MqttSettings, new_client, parse_broker_url, start

log = logging.getLogger(__name__)


class MqttLink:
    def __init__(
        self,
        client_id: str,
        broker_url: str,
        settings: MqttSettings,
        subscriptions: list[str],
        will: tuple[str, bytes] | None = None,
    ):
        self.broker = parse_broker_url(broker_url)
        self.settings = settings
        self.subscriptions = subscriptions
        self.inbox: queue.SimpleQueue[tuple[str, object]] = queue.SimpleQueue()
        self.acks: queue.SimpleQueue[tuple[int, bool, str]] = queue.SimpleQueue()
        self._connected = threading.Event()
        self.client = new_client(client_id, self.broker, settings, will=will)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.client.on_publish = self._on_publish

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def start(self) -> None:
        start(self.client, self.broker, self.settings, persistent=False)

    def stop(self) -> None:
        self._connected.clear()
        self.client.disconnect()
        self.client.loop_stop()

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> mqtt.MQTTMessageInfo:
        """QoS 1; queued by paho while disconnected. Its ``mid`` comes back on ``acks``."""
        return self.client.publish(topic, payload, qos=1, retain=retain)

    # ------------------------------------------------------------------ paho's thread
    def _on_connect(self, client, userdata, flags, reason_code, properties):
        if reason_code.is_failure:
            log_event(
                log, "mqtt_refused", logging.ERROR, broker=str(self.broker), reason=str(reason_code)
            )
            return
        client.subscribe([(topic, 1) for topic in self.subscriptions])
        self._connected.set()
        log_event(log, "mqtt_connected", broker=str(self.broker))
        self.inbox.put(("connected", None))

    def _on_disconnect(self, client, userdata, flags, reason_code, properties):
        was = self._connected.is_set()
        self._connected.clear()
        if was:
            log_event(
                log,
                "mqtt_disconnected",
                logging.WARNING,
                broker=str(self.broker),
                reason=str(reason_code),
            )
            self.inbox.put(("disconnected", str(reason_code)))

    def _on_message(self, client, userdata, message):
        self.inbox.put(("message", (message.topic, bytes(message.payload), bool(message.retain))))

    def _on_publish(self, client, userdata, mid, reason_code, properties):
        self.acks.put((mid, bool(reason_code.is_failure), str(reason_code)))
