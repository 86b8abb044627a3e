"""The receive path: MQTT messages into the durable inbox, acknowledged to the broker after the commit.

paho's network thread only queues each message here. One writer thread
takes whatever has queued up (up to ``batch_max`` messages or
``batch_max_bytes``), appends it to the inbox
in one commit and only then sends the PUBACKs (paho's manual acks). Nothing
else happens on this path, so the cloud drains the broker as fast as
updates arrive and no broker queue limit is reached while the round loop
verifies and aggregates behind it. When the inbox holds ``max_waiting``
messages the writer stops acknowledging until the round loop catches up:
the broker then holds the rest (back-pressure, not loss).
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

from ftlct.cloud.state.inbox import Inbox
from ftlct.protocol.errors import is_exit

log = logging.getLogger("ftlct.cloud.intake")

Ack = Callable[[int, int], None]  # (mid, qos) -> PUBACK to the broker
RETRY_S = 1.0


class BrokerIntake:
    def __init__(
        self,
        inbox_path: Path,
        ack: Ack,
        arrived: threading.Event,
        batch_max: int = 1000,
        max_waiting: int = 100_000,
        batch_max_bytes: int = 64 * 1024 * 1024,
    ):
        self.inbox_path = inbox_path
        self.ack = ack
        self.arrived = arrived  # set after each commit: the round loop has work
        self.batch_max = batch_max
        self.batch_max_bytes = batch_max_bytes
        self.max_waiting = max_waiting
        self.queue: queue.SimpleQueue = queue.SimpleQueue()
        self.stored = 0  # messages committed so far (for logs and tests)
        self.last_arrival = 0.0  # time.monotonic() of the last message paho handed over
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ftl-cloud-intake", daemon=True)

    def on_message(self, client, userdata, message) -> None:
        """paho's ``on_message`` (network thread): queue, nothing more."""
        self.last_arrival = time.monotonic()
        self.queue.put(message)

    def receiving(self, within_s: float) -> bool:
        """True while messages are arriving (one came in the last ``within_s``) or wait to be stored."""
        return not self.queue.empty() or time.monotonic() - self.last_arrival < within_s

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Store and acknowledge what has arrived, then end the writer thread."""
        self._stop.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        inbox = Inbox(self.inbox_path)  # this thread's own connection
        try:
            while True:
                batch = self._next_batch()
                if batch is None:
                    return
                if not batch:
                    continue
                try:
                    self._store(inbox, batch)
                except BaseException as exc:  # this thread must outlive any one batch
                    if is_exit(exc):
                        raise
                    log.error(
                        "receive path failed on %d messages (%r); the broker redelivers "
                        "them after a reconnect",
                        len(batch),
                        exc,
                        exc_info=exc,
                    )
        finally:
            inbox.close()

    def _next_batch(self) -> list | None:
        try:
            first = self.queue.get(timeout=0.2)
        except queue.Empty:
            return None if self._stop.is_set() else []
        batch, size = [first], len(first.payload)
        while len(batch) < self.batch_max and size < self.batch_max_bytes:
            try:
                message = self.queue.get_nowait()
            except queue.Empty:
                break
            batch.append(message)
            size += len(message.payload)
        return batch

    def _store(self, inbox: Inbox, batch: list) -> None:
        rows = [(m.topic, bytes(m.payload), bool(m.retain)) for m in batch]
        while True:
            try:
                if inbox.count() < self.max_waiting:
                    inbox.append(rows)
                    break
                log.warning("inbox holds %d messages; not acknowledging more yet", self.max_waiting)
            except sqlite3.Error as exc:  # a full or failing disk: keep the messages unacknowledged
                log.error("could not store %d received messages (%s); retrying", len(rows), exc)
            if self._stop.wait(RETRY_S):
                return  # shutting down: unacknowledged, the broker redelivers them
        self.stored += len(rows)
        for message in batch:
            if message.qos:
                try:
                    self.ack(message.mid, message.qos)
                except Exception as exc:  # the connection went away: the broker redelivers it
                    log.warning("could not acknowledge message %d: %s", message.mid, exc)
        self.arrived.set()
