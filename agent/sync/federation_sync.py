"""``FederationSync``: the loop that makes a site a member of the federation.

One thread (``BackgroundLoop``) does what the MQTT link queues, in order:

* messages go to the ``Inbox`` (verified, kept; models for this site installed
  through the gate by the agent's ``ModelInstaller``);
* PUBACKs and the outbox go through the ``OutboxSender`` (resent with backoff until
  the cloud's receipt, which the inbox hands to ``Receipts``);
* the ``TrainingSchedule`` (serve only) plans rounds, trains in a child
  process and releases the delta into the outbox;
* the ``Heartbeat`` (serve only) tells ``ftl-agent status`` whether serve is connected.

Each part gets what it uses in its constructor (``agent/components.py`` wires
serve's); the bench's MQTT sites run the same loop with their own data source
(``ftlct.bench.mqtt_site``), so what an agent does on the wire is what the
experiment measures.
"""

from __future__ import annotations

import logging
import queue
from collections import Counter

from ftlct.agent.background import BackgroundLoop
from ftlct.agent.logs import log_event
from ftlct.agent.sync import message_tally
from ftlct.agent.sync.heartbeat import Heartbeat
from ftlct.agent.sync.inbox import Inbox
from ftlct.agent.sync.local_rounds import TrainingSchedule
from ftlct.agent.sync.mqtt_link import MqttLink
from ftlct.agent.sync.outbox_sender import OutboxSender
from ftlct.protocol.errors import is_exit

log = logging.getLogger(__name__)

BATCH = 500  # messages handled (and their outcomes committed) per turn of the loop


class FederationSync(BackgroundLoop):
    name = "federation-sync"
    idle_wait_s = 0.25

    def __init__(
        self,
        link: MqttLink,
        inbox: Inbox,
        sender: OutboxSender,
        schedule: TrainingSchedule | None = None,
        heartbeat: Heartbeat | None = None,
    ):
        super().__init__()
        self.link = link
        self.inbox = inbox
        self.sender = sender
        self.schedule = schedule
        self.heartbeat = heartbeat

    @property
    def connected(self) -> bool:
        return self.link.connected

    @property
    def training_active(self) -> bool:
        return self.schedule is not None and self.schedule.active

    def start(self) -> None:
        self._beat(False)
        self.inbox.resume()
        self.link.start()
        super().start()
        log_event(
            log, "federation_sync_started", site=self.inbox.site, federation=self.inbox.federation
        )

    def stop(self) -> None:  # type: ignore[override]
        super().stop()
        if self.schedule is not None:
            self.schedule.stop()
        self.link.stop()
        self._beat(False)

    def run_once(self) -> bool:
        worked = self._drain_inbox()
        worked |= self.sender.drain_acks()
        worked |= self.sender.publish_due()
        if self.schedule is not None:
            worked |= self.schedule.tick()
        if self.heartbeat is not None:
            self.heartbeat.beat_if_due(self.connected)
        return worked

    def _drain_inbox(self) -> bool:
        worked = False
        outcomes: Counter[str] = Counter()
        try:
            for _ in range(BATCH):  # then the acks and the outbox get their turn
                try:
                    kind, item = self.link.inbox.get_nowait()
                except queue.Empty:
                    break
                worked = True
                if kind in ("connected", "disconnected"):
                    self._beat(kind == "connected")
                    if kind == "connected":
                        self.sender.reconnected()
                elif kind == "message":
                    outcomes[self._handle(*item)] += 1
        finally:
            if outcomes:
                self._count(outcomes)
        return worked

    def _handle(self, topic: str, payload: bytes, _retained: bool) -> str:
        try:
            return self.inbox.handle(topic, payload)
        except BaseException as exc:  # one message never ends the loop: counted, logged
            if is_exit(exc):
                raise
            log_event(
                log,
                "message_failed",
                logging.ERROR,
                topic=topic[:120],
                error=type(exc).__name__,
                detail=str(exc)[:200],
            )
            return "internal"

    def _count(self, outcomes: Counter) -> None:
        message_tally.add(self.inbox.db, outcomes)

    def _beat(self, connected: bool) -> None:
        if self.heartbeat is not None:
            self.heartbeat.beat(connected)
