"""``ftl-cloud serve``: the MQTT side of the round loop.

Two paths, joined by the durable inbox (``state/inbox.py``):

- receive (``broker_intake.py``): paho's network thread queues each message,
  a writer thread appends batches to the inbox and acknowledges them to the
  broker (manual PUBACK) only after the commit;
- judge (this loop): take the oldest inbox messages, let the round
  coordinator verify, store and count them in one commit that also removes
  them from the inbox, publish the receipts, then check deadlines.

With a persistent session (fixed client id, clean_start False), updates
published while the cloud is down wait at the broker; one received but not
yet in the inbox when the cloud dies is delivered again; one in the inbox is
judged after the restart. The update_id makes any second copy a duplicate.
"""

from __future__ import annotations

import collections
import logging
import queue
import signal
import sys
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.subscribeoptions import SubscribeOptions

from ftlct.cloud.broker_intake import BrokerIntake
from ftlct.cloud.cloud_identity import cloud_identity
from ftlct.cloud.initial_model import NETWORK, InitialModel, head_of, network_from_file
from ftlct.cloud.round_coordinator import RoundCoordinator
from ftlct.cloud.settings import CloudSettings
from ftlct.cloud.state import StateStore
from ftlct.cloud.state.inbox import Inbox
from ftlct.cloud.strategies import make_strategy
from ftlct.export.model_dir import ModelDir
from ftlct.protocol.mqtt_connection import new_client, parse_broker_url, start
from ftlct.protocol.topics import Topics

log = logging.getLogger("ftlct.cloud.server")

PUBLISH_DRAIN_S = 10.0
JUDGE_BATCH = 256  # inbox messages judged per commit when nothing is arriving
STORE_RETRY_S = 1.0
# Receiving comes first. paho reads about one packet per select() and needs the GIL for each,
# so a judging thread holding it for the default 5 ms switch interval throttles reading to a
# few hundred packets a second; mosquitto then drops what it cannot write to the socket
# (past max_queued_messages, in its out-packet queue). So the switch interval is short, and
# while messages are arriving the round loop judges small slices (each commit's fsync frees
# the GIL too) and pauses between them for paho and the inbox writer.
SWITCH_INTERVAL_S = 0.0005
RECEIVING_WINDOW_S = 0.05
JUDGE_SLICE = 16
RECEIVING_PAUSE_S = 0.002
REMOVE_EVERY = 1024  # judged inbox rows deleted at once while a backlog is being judged


def serve(settings: CloudSettings, stop: threading.Event | None = None) -> None:
    """Run rounds until ``settings.rounds`` are complete or ``stop`` is set (SIGTERM/SIGINT)."""
    stop = stop or _stop_on_signals()
    sys.setswitchinterval(SWITCH_INTERVAL_S)  # this process is ftl-cloud serve: see above
    broker = parse_broker_url(settings.broker)
    strategy = make_strategy(settings.strategy, **settings.strategy_params)
    store = StateStore.open(settings.state_path)
    identity = cloud_identity(settings)
    topics = Topics(settings.federation)
    events: queue.SimpleQueue = queue.SimpleQueue()  # "connected", from paho's thread
    arrived = threading.Event()
    pending: collections.deque[mqtt.MQTTMessageInfo] = collections.deque()

    client = new_client(settings.mqtt_client_id, broker, settings.mqtt, manual_ack=True)
    inbox = Inbox.open(settings.state_path)
    intake = BrokerIntake(
        inbox.db.path, client.ack, arrived, max_waiting=settings.limits.max_inbox_messages
    )

    def publish(topic: str, payload: bytes, retain: bool) -> None:
        pending.append(client.publish(topic, payload, qos=1, retain=retain))
        while pending and pending[0].is_published():
            pending.popleft()

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
        events.put("connected")

    def on_disconnect(client, userdata, flags, reason_code, properties):
        if not stop.is_set():
            log.warning("disconnected from %s (%s); reconnecting", broker, reason_code)

    client.on_connect = on_connect
    client.on_disconnect = on_disconnect
    client.on_message = intake.on_message

    coordinator = RoundCoordinator(settings, store, strategy, identity, publish)
    coordinator.initialise(_initial_model(settings, store))
    inbox.continue_after(coordinator.inbox_judged)
    log.info(
        "cloud %s serving federation %s on %s", identity.public_b64, settings.federation, broker
    )
    intake.start()
    start(client, broker, settings.mqtt, persistent=True)
    try:
        connected = False
        while not stop.is_set():
            while not events.empty():
                events.get()
                connected = True
                coordinator.publish_all()
            receiving = intake.receiving(RECEIVING_WINDOW_S)
            if _judge_waiting(coordinator, inbox, JUDGE_SLICE if receiving else JUDGE_BATCH):
                if receiving:
                    time.sleep(RECEIVING_PAUSE_S)  # the GIL to paho and the inbox writer
            else:
                arrived.wait(settings.tick_s)
                arrived.clear()
            if connected:
                coordinator.tick()
                if coordinator.finished:
                    log.info("all %d rounds complete", settings.rounds)
                    break
        _drain(pending)
    finally:
        client.disconnect()
        client.loop_stop()
        intake.stop()
        inbox.close()
        store.close()


def _judge_waiting(coordinator: RoundCoordinator, inbox: Inbox, limit: int = JUDGE_BATCH) -> bool:
    """Judge up to ``limit`` of the oldest inbox messages not judged yet; False if there were none.

    Judged rows are deleted once the backlog is judged or ``REMOVE_EVERY`` have piled up:
    not after every small slice, as each delete is a commit of its own (an fsync)."""
    messages = inbox.after(coordinator.inbox_judged, limit)
    if not messages:
        if coordinator.inbox_judged > inbox.removed_upto:
            inbox.remove_upto(coordinator.inbox_judged)
        return False
    try:
        coordinator.on_inbox(messages)
    except Exception as exc:  # the commit itself failed (a full disk): they stay in the inbox
        coordinator.errors.step_failed(f"judging {len(messages)} inbox messages", exc)
        time.sleep(STORE_RETRY_S)
        return True
    judged = coordinator.inbox_judged
    if len(messages) < limit or judged - inbox.removed_upto >= REMOVE_EVERY:
        inbox.remove_upto(judged)
    return True


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
