"""``TwinPublisher``: keeps the retained ``twins/{site}/state`` up to date over sync's connection.

Republished when something changes (a stored instance, a result, a model swap,
a reconnect: debounced to one message per ``twin.debounce_s``) and at least
every ``twin.period_s``. The connection's last will (registered by sync) says
"offline" if the agent vanishes; a graceful stop publishes "offline" itself,
because a clean disconnect does not fire the will.
"""

from __future__ import annotations

import logging
import time

from ftlct.agent.background import BackgroundLoop
from ftlct.agent.events import INSTANCE_STORED, MODEL_SWAPPED, RESULT_READY
from ftlct.agent.logs import log_event
from ftlct.agent.settings import AgentSettings
from ftlct.agent.twin.twin_builder import build_twin_state
from ftlct.protocol.exchange import build_twin_state as seal_twin_state
from ftlct.protocol.twin_state import TwinState

log = logging.getLogger(__name__)

OFFLINE_WAIT_S = 3.0


class TwinPublisher(BackgroundLoop):
    name = "twin"
    idle_wait_s = 0.5

    def __init__(self, settings: AgentSettings, sync):
        super().__init__()
        self.settings = settings.twin
        self.sync = sync
        self.started_at = time.time()
        self._dirty = True
        self._last_sent = 0.0
        self._was_connected = False
        self._unsubscribe = []

    def start(self, service) -> None:  # type: ignore[override]
        self.service = service
        for event in (INSTANCE_STORED, RESULT_READY, MODEL_SWAPPED):
            self._unsubscribe.append(service.events.subscribe(event, self._changed))
        super().start()

    def stop(self) -> None:  # type: ignore[override]
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        super().stop()
        self._publish_offline()

    def _changed(self, _payload) -> None:
        self._dirty = True  # the emitter's thread: only a flag, the loop does the work

    def state(self) -> TwinState:
        return build_twin_state(
            self.service.db,
            self.service.status(),
            self.service.engine.current.version,
            self.sync.training_active,
            self.started_at,
        )

    def run_once(self) -> bool:
        connected = self.sync.connected
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
        payload = seal_twin_state(self.sync.identity, self.sync.federation, state)
        self.sync.publish_retained(self.sync.topics.twin_state(self.sync.site), payload)
        log_event(log, "twin_published", status=state.status, model_version=state.model_version)
        return False

    def _publish_offline(self) -> None:
        if not self.sync.connected:
            return
        state = TwinState(status="offline", model_version=self.service.engine.current.version)
        payload = seal_twin_state(self.sync.identity, self.sync.federation, state)
        info = self.sync.publish_retained(self.sync.topics.twin_state(self.sync.site), payload)
        if info is not None:
            try:
                info.wait_for_publish(OFFLINE_WAIT_S)
            except (RuntimeError, ValueError):
                log_event(log, "twin_offline_not_acknowledged", logging.WARNING)
