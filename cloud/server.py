"""``ftl-cloud serve``: the MQTT side of the round loop.

paho's network thread only queues what arrives; one loop thread handles each
message (store first), THEN acknowledges it (manual PUBACK), then checks
deadlines. With a persistent session (fixed client id, clean_start False),
updates published while the cloud is down wait at the broker; one delivered
but not yet stored when the cloud dies is delivered again and stored once
(the update_id makes the resend a no-op).
"""

from __future__ import annotations

import logging
import queue
import signal
import threading
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.subscribeoptions import SubscribeOptions

from ftlct.cloud.cloud_identity import cloud_identity
from ftlct.cloud.initial_model import NETWORK, InitialModel, head_of, network_from_file
from ftlct.cloud.round_coordinator import RoundCoordinator
from ftlct.cloud.settings import CloudSettings
from ftlct.cloud.state import StateStore
from ftlct.cloud.strategies import make_strategy
from ftlct.export.model_dir import ModelDir
from ftlct.protocol.mqtt_connection import new_client, parse_broker_url, start
from ftlct.protocol.topics import Topics

log = logging.getLogger("ftlct.cloud.server")

PUBLISH_DRAIN_S = 10.0


def serve(settings: CloudSettings, stop: threading.Event | None = None) -> None:
    """Run rounds until ``settings.rounds`` are complete or ``stop`` is set (SIGTERM/SIGINT)."""
    stop = stop or _stop_on_signals()
    broker = parse_broker_url(settings.broker)
    strategy = make_strategy(settings.strategy, **settings.strategy_params)
    store = StateStore.open(settings.state_path)
    identity = cloud_identity(settings)
    topics = Topics(settings.federation)
    inbox: queue.Queue = queue.Queue()
    pending: list[mqtt.MQTTMessageInfo] = []

    client = new_client(settings.mqtt_client_id, broker, settings.mqtt, manual_ack=True)

    def publish(topic: str, payload: bytes, retain: bool) -> None:
        pending.append(client.publish(topic, payload, qos=1, retain=retain))
        pending[:] = [info for info in pending if not info.is_published()]

    def on_connect(client, userdata, flags, reason_code, properties):
        if reason_code.is_failure:
            log.error("broker %s refused the connection: %s", broker, reason_code)
            return
        # retain-as-published: a retained update (sites never retain one) arrives flagged even
        # while the cloud is connected, so the round loop can clear it from the broker
        client.subscribe(
            [
                (topics.all_updates, SubscribeOptions(qos=1, retainAsPublished=True)),
                (topics.all_twin_states, SubscribeOptions(qos=1)),
            ]
        )
        inbox.put(("connected", None))

    def on_disconnect(client, userdata, flags, reason_code, properties):
        if not stop.is_set():
            log.warning("disconnected from %s (%s); reconnecting", broker, reason_code)

    client.on_connect = on_connect
    client.on_disconnect = on_disconnect
    client.on_message = lambda client, userdata, message: inbox.put(("message", message))

    coordinator = RoundCoordinator(settings, store, strategy, identity, publish)
    coordinator.initialise(_initial_model(settings, store))
    log.info(
        "cloud %s serving federation %s on %s", identity.public_b64, settings.federation, broker
    )
    start(client, broker, settings.mqtt, persistent=True)
    try:
        connected = False
        while not stop.is_set():
            try:
                kind, message = inbox.get(timeout=settings.tick_s)
            except queue.Empty:
                kind, message = None, None
            if kind == "connected":
                connected = True
                coordinator.publish_all()
            elif kind == "message":
                coordinator.on_message(message.topic, message.payload, bool(message.retain))
                if message.qos:
                    client.ack(message.mid, message.qos)
            if connected:
                coordinator.tick()
                if coordinator.finished:
                    log.info("all %d rounds complete", settings.rounds)
                    break
        _drain(pending)
    finally:
        client.disconnect()
        client.loop_stop()
        store.close()


def _initial_model(settings: CloudSettings, store: StateStore) -> InitialModel | None:
    """What the federation starts from: required for a new one, checked against it if given later.

    ``--initial-weights`` (a whole network) wins over ``--model`` (a head),
    whose default path may exist without being meant. A running federation of a
    whole network ignores ``--model``; one of a head checks it if the directory exists.
    """
    if settings.initial_weights:
        return network_from_file(settings.initial_weights)
    if store.models.current_versions() and (
        store.meta.get("kind") == NETWORK or not Path(settings.model, "manifest.json").is_file()
    ):
        return None
    return head_of(ModelDir.load(settings.model))


def _drain(pending: list[mqtt.MQTTMessageInfo]) -> None:
    for info in pending:
        try:
            info.wait_for_publish(PUBLISH_DRAIN_S)
        except (RuntimeError, ValueError):
            log.warning("a publish was not acknowledged before shutdown; it is re-sent on restart")


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    return stop
