"""``TwinPublisher``: keeps the retained ``twins/{site}/state`` up to date over sync's connection.

Republished when something changes (a stored instance, a result, a model swap,
a reconnect: debounced to one message per ``twin.debounce_s``) and at least
every ``twin.period_s``. The connection's last will (registered with the link)
says "offline" if the agent vanishes; a graceful stop publishes "offline"
itself, because a clean disconnect does not fire the will.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from ftlct.agent.background import BackgroundLoop
from ftlct.agent.events import INSTANCE_STORED, MODEL_SWAPPED, RESULT_READY, EventBus
from ftlct.agent.logs import log_event
from ftlct.agent.settings import TwinSettings
from ftlct.agent.sync.mqtt_link import MqttLink
from ftlct.protocol.exchange import build_twin_state as seal_twin_state
from ftlct.protocol.identity import Identity
from ftlct.protocol.twin_state import TwinState

log = logging.getLogger(__name__)

OFFLINE_WAIT_S = 3.0


class TwinPublisher(BackgroundLoop):
    name = "twin"
    idle_wait_s = 0.5

    def __init__(
        self,
        settings: TwinSettings,
        link: MqttLink,
        identity: Identity,
        federation: str,
        topic: str,
        events: EventBus,
        state: Callable[[], TwinState],
        model_version: Callable[[], str],
    ):
        """``state()`` builds the current twin state; ``model_version()`` names the model in use."""
        super().__init__()
        self.settings = settings
        self.link = link
        self.identity = identity
        self.federation = federation
        self.topic = topic
        self.events = events
        self.state = state
        self.model_version = model_version
        self._dirty = True
        self._last_sent = 0.0
        self._was_connected = False
        self._unsubscribe = []

    def start(self) -> None:
        for event in (INSTANCE_STORED, RESULT_READY, MODEL_SWAPPED):
            self._unsubscribe.append(self.events.subscribe(event, self._changed))
        super().start()

    def stop(self) -> None:  # type: ignore[override]
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        super().stop()
        self._publish_offline()

    def _changed(self, _payload) -> None:
        self._dirty = True  # the emitter's thread: only a flag, the loop does the work

    def run_once(self) -> bool:
        connected = self.link.connected
        if connected and not self._was_connected:
            self._dirty = True  # a new connection: the retained state may be the will's "offline"
        self._was_connected = connected
        if not connected:
            return False
        now = time.monotonic()
        due = now - self._last_sent >= self.settings.period_s
        debounced = now - self._last_sent >= self.settings.debounce_s
        if not (due or (self._dirty and debounced)):
            return False
        self._dirty = False
        self._last_sent = now
        state = self.state()
        self.link.publish(self.topic, seal_twin_state(self.identity, self.federation, state), True)
        log_event(log, "twin_published", status=state.status, model_version=state.model_version)
        return False

    def _publish_offline(self) -> None:
        if not self.link.connected:
            return
        state = TwinState(status="offline", model_version=self.model_version())
        payload = seal_twin_state(self.identity, self.federation, state)
        info = self.link.publish(self.topic, payload, retain=True)
        try:
            info.wait_for_publish(OFFLINE_WAIT_S)
        except (RuntimeError, ValueError):
            log_event(log, "twin_offline_not_acknowledged", logging.WARNING)
