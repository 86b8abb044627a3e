"""Publish the outbox over the site's MQTT link and mark what the broker acknowledged.

Every entry is published QoS 1 and forgotten by the outbox only when the
PUBACK for that message id arrives (``Outbox.acknowledged``). paho resends
unacknowledged messages after a reconnect; an entry published long ago
without a PUBACK is published again (a new mid), and one the broker refused
waits before the next try. Entries left from an earlier run go out at start
(update ids make resends harmless).
"""

from __future__ import annotations

import logging
import queue
import time

from ftlct.agent.logs import log_event
from ftlct.agent.sync.mqtt_link import MqttLink
from ftlct.agent.sync.outbox import Outbox

log = logging.getLogger(__name__)

RESEND_AFTER_S = 120.0  # connected, published, no PUBACK: publish again (a new mid)
RETRY_FAILED_S = 30.0  # the broker refused a publish (PUBACK failure): try again later


class OutboxSender:
    def __init__(self, outbox: Outbox, link: MqttLink, clock=time.monotonic):
        self.outbox = outbox
        self.link = link
        self.clock = clock
        self._in_flight: dict[int, tuple[int, float]] = {}  # entry id -> (mid, published at)
        self._mid_entries: dict[int, int] = {}  # mid -> entry id
        self._retry_at: dict[int, float] = {}

    def publish_due(self) -> bool:
        """Publish every entry not in flight (or in flight for too long); True if any went."""
        if not self.link.connected:
            return False
        worked = False
        now = self.clock()
        for entry in self.outbox.entries():
            sent = self._in_flight.get(entry.id)
            if sent is not None and now - sent[1] < RESEND_AFTER_S:
                continue
            if self._retry_at.get(entry.id, 0.0) > now:
                continue
            info = self.link.publish(entry.topic, entry.payload)
            self._in_flight[entry.id] = (info.mid, now)
            self._mid_entries[info.mid] = entry.id
            worked = True
            log_event(log, "update_published", update_id=entry.update_id, mid=info.mid)
        return worked

    def drain_acks(self) -> bool:
        """Handle every PUBACK the link queued; True if one was for an update."""
        worked = False
        while True:
            try:
                mid, failed, reason = self.link.acks.get_nowait()
            except queue.Empty:
                return worked
            entry_id = self._mid_entries.pop(mid, None)
            if entry_id is None:
                continue  # a twin publish, or an earlier copy of a resent update
            worked = True
            self._in_flight.pop(entry_id, None)
            if failed:
                self.outbox.publish_failed(entry_id, reason)
                self._retry_at[entry_id] = self.clock() + RETRY_FAILED_S
                log_event(log, "update_refused_by_broker", logging.WARNING, reason=reason)
                continue
            update_id = self.outbox.acknowledged(entry_id)
            if update_id:
                log_event(log, "update_acknowledged", update_id=update_id)
