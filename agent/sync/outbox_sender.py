"""Publish the outbox over the site's MQTT link, resending with backoff until the cloud answers.

Every entry is published QoS 1. The broker's PUBACK is noted and nothing more
(``Outbox.broker_acknowledged``): the broker may still drop the message (a
lagging subscriber's queue, a restart without persistence, nobody subscribed).
An entry leaves the outbox only on the cloud's signed receipt
(``sync.receipts``) or when its round closes. Until then it is published again
after ``federation.resend_initial_s``, each wait ``resend_factor`` times the
last up to ``resend_max_s``, jittered so that sites do not resend in step; a
reconnect makes every entry due at once (what was in flight may be gone with
the broker's session). Entries left from an earlier run go out at start.
"""

from __future__ import annotations

import logging
import queue
import random
import time

from ftlct.agent.logs import log_event
from ftlct.agent.settings import FederationSettings
from ftlct.agent.sync.mqtt_link import MqttLink
from ftlct.agent.sync.outbox import Outbox

log = logging.getLogger(__name__)

JITTER = 0.2  # each wait is drawn from [1 - JITTER, 1 + JITTER] times its nominal length


def resend_delay(settings: FederationSettings, publishes: int, rng: random.Random) -> float:
    """Seconds to wait after the ``publishes``-th publish of an entry (1 = the first)."""
    nominal = settings.resend_initial_s * settings.resend_factor ** max(0, publishes - 1)
    return min(settings.resend_max_s, nominal) * rng.uniform(1 - JITTER, 1 + JITTER)


class OutboxSender:
    def __init__(
        self,
        outbox: Outbox,
        link: MqttLink,
        settings: FederationSettings,
        clock=time.monotonic,
        rng: random.Random | None = None,
    ):
        self.outbox = outbox
        self.link = link
        self.settings = settings
        self.clock = clock
        self.rng = rng or random.Random()
        # keyed by update id: SQLite reuses a deleted row's id for the next update
        self._due_at: dict[str, float] = {}  # update id -> when to publish it again
        self._publishes: dict[str, int] = {}  # update id -> publishes by this process
        self._mid_updates: dict[int, str] = {}  # mid -> update id

    def reconnected(self) -> None:
        """A new connection: publish every entry again now."""
        self._due_at.clear()

    def publish_due(self) -> bool:
        """Publish every entry whose wait is over; True if any went."""
        if not self.link.connected:
            return False
        worked = False
        now = self.clock()
        entries = self.outbox.entries()
        live = {entry.update_id for entry in entries}
        for gone in set(self._due_at) - live:  # receipted or closed meanwhile
            self._due_at.pop(gone, None)
            self._publishes.pop(gone, None)
        for entry in entries:
            key = entry.update_id
            if self._due_at.get(key, 0.0) > now:
                continue
            info = self.link.publish(entry.topic, entry.payload)
            self.outbox.published(key)
            count = self._publishes.get(key, 0) + 1
            self._publishes[key] = count
            self._due_at[key] = now + resend_delay(self.settings, count, self.rng)
            self._mid_updates[info.mid] = key
            worked = True
            log_event(
                log,
                "update_published" if entry.attempts == 0 else "update_resent",
                update_id=entry.update_id,
                mid=info.mid,
                attempt=entry.attempts + 1,
            )
        return worked

    def drain_acks(self) -> bool:
        """Handle every PUBACK the link queued; True if one was for an update."""
        worked = False
        while True:
            try:
                mid, failed, reason = self.link.acks.get_nowait()
            except queue.Empty:
                return worked
            update_id = self._mid_updates.pop(mid, None)
            if update_id is None:
                continue  # a twin publish
            worked = True
            if failed:  # the broker refused it: the backoff decides when to try again
                self.outbox.publish_failed(update_id, reason)
                log_event(
                    log,
                    "update_refused_by_broker",
                    logging.WARNING,
                    update_id=update_id,
                    reason=reason,
                )
                continue
            self.outbox.broker_acknowledged(update_id)
            log_event(log, "update_at_broker", update_id=update_id)
