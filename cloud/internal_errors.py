"""What the code did not expect: counted, logged in full once per exception type, never fatal.

A message that makes the round loop raise (a bug, a full disk) is refused
as ``internal`` and acknowledged, so the broker does not redeliver it for
ever; a round step that raises is retried on the next tick. The first error
of each type is logged with its traceback, later ones in one rate-limited line.
"""

from __future__ import annotations

import logging

from ftlct.cloud.log_limiter import LogLimiter
from ftlct.cloud.state import StateStore
from ftlct.protocol.errors import ProtocolError
from ftlct.protocol.topics import parse_topic


class InternalErrors:
    def __init__(self, store: StateStore, limiter: LogLimiter, rejections_kept: int):
        self.store = store
        self.limiter = limiter
        self.rejections_kept = rejections_kept
        self._seen: set[str] = set()  # exception types already logged with their traceback

    def message_failed(self, topic: str, exc: Exception) -> str:
        """Count the failed message (the caller rolled its changes back); its outcome text."""
        self._log(f"handling a message on {topic[:200]!r}", exc)
        try:
            ref = parse_topic(topic)
        except ProtocolError:
            ref = None
        try:
            with self.store.transaction():
                if ref is not None and ref.kind == "twin_state":
                    self.store.counters.bump("twin_rejected.internal")
                    self.store.counters.bump("messages.twin_rejected")
                else:
                    detail = f"{type(exc).__name__}: {exc}"
                    site = ref.subject if ref is not None else None
                    self.store.rejections.record(
                        None, site, "internal", detail, self.rejections_kept
                    )
                    self.store.counters.bump("messages.rejected")
        except Exception as again:  # the store itself fails: the log is all that is left
            self.limiter.log(logging.ERROR, "store", "could not count an internal error: %s", again)
        return "rejected:internal"

    def step_failed(self, what: str, exc: Exception) -> None:
        self._log(what, exc)

    def _log(self, what: str, exc: Exception) -> None:
        kind = type(exc).__name__
        if kind not in self._seen:
            self._seen.add(kind)
            self.limiter.logger.error(
                "internal error (%s) %s; counted, later ones of this type logged briefly",
                kind,
                what,
                exc_info=exc,
            )
        else:
            self.limiter.log(
                logging.ERROR, f"internal.{kind}", "internal error (%s) %s: %s", kind, what, exc
            )
