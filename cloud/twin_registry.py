"""Mirror of every site's retained ``twins/{site}/state`` (and its last will) in the state DB.

Only enrolled sites count, and only states that pass the closed twin schema
(``protocol.twin_state``); anything else is logged (rate-limited) and counted
under ``twin_rejected.<reason>``, never stored. Retained junk on ``twins/`` is
refused this way at every (re)subscribe and never becomes fatal. ``last_seen`` is when the cloud
heard from the site; for a retained message replayed by the broker it is the
time the agent built it, so a restart of the cloud does not make a long-gone
site look fresh.
"""

from __future__ import annotations

import logging
import time

from ftlct.cloud.log_limiter import LogLimiter
from ftlct.cloud.state import StateStore
from ftlct.protocol.errors import ProtocolError
from ftlct.protocol.exchange import open_twin_state

log = logging.getLogger("ftlct.cloud.twins")


class TwinRegistry:
    def __init__(self, store: StateStore, federation: str, limiter: LogLimiter | None = None):
        self.store = store
        self.federation = federation
        self.limiter = limiter or LogLimiter(log)

    def on_state(self, topic_site: str, payload: bytes, retained: bool) -> str:
        if not payload:  # a cleared retained message: nothing to mirror
            return "ignored"
        try:
            twin = open_twin_state(payload, self.store.sites.public_key, self.federation)
            if twin.site != topic_site:
                raise ProtocolError("wrong_sender", f"twin of {twin.site} on {topic_site}'s topic")
        except ProtocolError as exc:
            self.store.counters.bump(f"twin_rejected.{exc.reason}")
            self.limiter.warning(
                f"twin.{exc.reason}",
                "ignored twin state on %s: %s: %s",
                topic_site,
                exc.reason,
                exc,
            )
            return f"twin_rejected:{exc.reason}"
        seen = min(twin.created, time.time()) if retained else time.time()
        self.store.twins.save(
            twin.site,
            twin.state.to_json(),
            twin.state.status,
            twin.state.online,
            twin.state.model_version,
            seen,
        )
        log.info(
            "twin %s: %s, model %s", twin.site, twin.state.status, twin.state.model_version or "-"
        )
        return "twin"
