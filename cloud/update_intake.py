"""One site update, from raw bytes to a stored update or a counted refusal.

Opening (size, header limits, form, enrolment, signature: ``protocol``), the
round's rules and the strategy's check (``update_validation``), then the
store. The ``UpdateVerdict`` says what became of it and, when the update
could be attributed to its site (signature verified, on the site's own
topic), carries the message, so that the site can be told.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from ftlct.cloud.current_models import CurrentModels
from ftlct.cloud.log_limiter import LogLimiter
from ftlct.cloud.settings import CloudSettings
from ftlct.cloud.state import RoundRow, StateStore
from ftlct.cloud.strategies import Strategy
from ftlct.cloud.update_validation import Duplicate, Rejection, check_stored, check_update
from ftlct.protocol.errors import ProtocolError
from ftlct.protocol.exchange import open_update
from ftlct.protocol.messages import UpdateMessage

log = logging.getLogger("ftlct.cloud.updates")


@dataclass(frozen=True)
class UpdateVerdict:
    outcome: str  # "accepted" | "duplicate" | "rejected"
    reason: str = ""  # why it was rejected
    message: UpdateMessage | None = None  # set once the update is known to come from its site

    @property
    def text(self) -> str:
        return f"rejected:{self.reason}" if self.outcome == "rejected" else self.outcome


class UpdateIntake:
    def __init__(
        self, settings: CloudSettings, store: StateStore, strategy: Strategy, limiter: LogLimiter
    ):
        self.settings = settings
        self.store = store
        self.strategy = strategy
        self.limiter = limiter

    def handle(
        self, topic_site: str, payload: bytes, current: RoundRow | None, models: CurrentModels
    ) -> UpdateVerdict:
        """Store the update for ``current`` or count why not (the caller holds the transaction)."""
        round_no = current.round if current else None
        message = None
        try:
            message = open_update(
                payload,
                self.store.sites.public_key,
                self.settings.federation,
                max_bytes=self.settings.limits.max_update_bytes,
                trust_on_first_use=self.settings.dev_trust_on_first_use,
            )
            if message.site != topic_site:
                signer, message = message.site, None  # not attributable to this topic's site
                raise Rejection(
                    "wrong_sender", f"update signed by {signer} on {topic_site}'s topic"
                )
            norm = check_update(
                message,
                current,
                self.store,
                models,
                self.strategy,
                self.settings.limits.max_delta_norm,
            )
            if not self.store.updates.add(current.round, message, norm):
                check_stored(message, current, self.store)  # raises: which of the two it was
                raise RuntimeError(f"update {message.update_id} refused by the store")
        except (ProtocolError, Rejection) as exc:
            self.store.rejections.record(
                round_no, topic_site, exc.reason, str(exc), self.settings.limits.rejections_kept
            )
            self.limiter.warning(
                exc.reason, "rejected update on %s: %s: %s", topic_site, exc.reason, exc
            )
            return UpdateVerdict("rejected", exc.reason, message)
        except Duplicate:
            self.store.counters.bump("updates_duplicate")
            log.info("ignored resend of update %s from %s", message.update_id, topic_site)
            return UpdateVerdict("duplicate", "", message)
        self._trust_on_first_use(message)
        self.store.twins.touch(message.site)
        log.info(
            "round %d: accepted update from %s (n=%d, |delta|=%.4g)",
            current.round,
            message.site,
            message.n_samples,
            norm,
        )
        return UpdateVerdict("accepted", "", message)

    def _trust_on_first_use(self, message: UpdateMessage) -> None:
        if (
            self.settings.dev_trust_on_first_use
            and self.store.sites.public_key(message.site) is None
        ):
            self.store.sites.enroll(message.site, message.public_key, via="trust-on-first-use")
            log.warning("DEV trust-on-first-use: enrolled %s from its first update", message.site)
