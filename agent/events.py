"""In-process events of the serve process, for components that plug in (sync, twin, training).

Subscribers run on the thread that emits, so they must be quick (hand work to
their own thread or queue); an exception in one is logged and never reaches
the emitter: a broken subscriber cannot refuse a C-STORE.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

# Event names and their payloads.
INSTANCE_STORED = "instance_stored"  # StoredInstance
SERIES_COMPLETED = "series_completed"  # {"series_uid", "generation"}
RESULT_READY = "result_ready"  # SeriesResult
RESULT_DELIVERED = "result_delivered"  # {"series_uid", "destination", "sop_instance_uid"}
MODEL_SWAPPED = "model_swapped"  # {"old_version", "new_version"}

Subscriber = Callable[[Any], None]


class EventBus:
    def __init__(self) -> None:
        self._subscribers: dict[str, list[Subscriber]] = defaultdict(list)
        self._lock = threading.Lock()

    def subscribe(self, event: str, callback: Subscriber) -> Callable[[], None]:
        """Call ``callback(payload)`` on every ``event``; returns a function that unsubscribes."""
        with self._lock:
            self._subscribers[event].append(callback)

        def unsubscribe() -> None:
            with self._lock:
                if callback in self._subscribers[event]:
                    self._subscribers[event].remove(callback)

        return unsubscribe

    def emit(self, event: str, payload: Any = None) -> None:
        with self._lock:
            callbacks = list(self._subscribers.get(event, ()))
        for callback in callbacks:
            try:
                callback(payload)
            except Exception:
                log.exception("subscriber of %s failed", event)
