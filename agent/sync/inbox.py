"""What the cloud sends, verified and kept: ``rounds/current``, ``model/{cluster}``, receipts.

Runs on the sync loop's thread (``MqttLink`` only queues on paho's): a round
announcement is verified with the cloud key and kept unless it is older than
the one kept; a global model is verified against the site's ``ModelPin`` and
kept. Then ``changed()`` is called (plan again), and ``model_for_me(model)``
when the kept model is the one the last announcement points this site at
(install it). With ``serve = "best"`` the model offered for installation is
the cluster's best version (``best/{cluster}``, judged by the sites'
validation reports) instead of the last; training always starts from the
round's base model either way. Messages that fail verification are logged with their reason,
counted (``model_events`` for models, the ``sync.rounds_refused`` meta for
rounds) and dropped; ``handle`` says what came of each message, which the sync
loop counts (``message_counts``). Receipts for this site's updates go to ``Receipts``
(``sync.receipts``), which also hears every round kept (updates of closed
rounds stop waiting).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from ftlct.agent.logs import log_event
from ftlct.agent.store.database import Database
from ftlct.agent.sync.model_events import ModelEvents
from ftlct.agent.sync.model_pin import ModelPin
from ftlct.agent.sync.receipts import Receipts
from ftlct.agent.sync.received_messages import ReceivedMessages
from ftlct.protocol.errors import ProtocolError
from ftlct.protocol.exchange import open_round
from ftlct.protocol.messages import GlobalModel
from ftlct.protocol.topics import parse_topic

log = logging.getLogger(__name__)

ROUNDS_REFUSED_META = "sync.rounds_refused"


class Inbox:
    def __init__(
        self,
        site: str,
        federation: str,
        cloud_key: str,
        db: Database,
        received: ReceivedMessages,
        model_events: ModelEvents,
        pin: Callable[[], ModelPin],
        receipts: Receipts,
        changed: Callable[[], None] = lambda: None,
        model_for_me: Callable[[GlobalModel], None] = lambda model: None,
        serve: str = "last",
    ):
        self.site = site
        self.federation = federation
        self.cloud_key = cloud_key
        self.db = db
        self.received = received
        self.model_events = model_events
        self.pin = pin
        self.receipts = receipts
        self.changed = changed
        self.model_for_me = model_for_me
        self.serve_best = serve == "best"

    def resume(self) -> None:
        """At start: updates whose round closed while the agent was away stop waiting."""
        announcement = self.received.load_round()
        if announcement is not None:
            self.receipts.on_round(announcement)

    def handle(self, topic: str, payload: bytes) -> str:
        """Verify and keep one message; what came of it (``round_kept``, ``model_refused``,
        ``receipt_ignored``...: the sync loop counts these)."""
        try:
            ref = parse_topic(topic)
        except ProtocolError:
            return "ignored"
        if ref.kind == "round":
            return self._on_round(payload)
        if ref.kind == "model":
            if not payload:  # empty retained payload: a dissolved cluster
                return "model_cleared"
            return self._on_model(ref.subject, payload)
        if ref.kind == "best_model":  # the cluster's best version (training.serve = best)
            if not payload:
                return "model_cleared"
            return self._on_model(ref.subject, payload, best=True)
        if ref.kind == "receipt":
            outcome = self.receipts.on_receipt(ref.subject, payload)
            return "receipt_ignored" if outcome.startswith("ignored") else "receipt_" + outcome
        return "ignored"

    def _on_round(self, payload: bytes) -> str:
        try:
            announcement = open_round(payload, self.cloud_key, self.federation)
        except ProtocolError as exc:
            self.db.set_meta(ROUNDS_REFUSED_META, str(rounds_refused(self.db) + 1))
            log_event(log, "round_refused", logging.WARNING, reason=exc.reason, detail=str(exc))
            return "round_refused"
        known = self.received.load_round()
        if known is not None and announcement.round < known.round:
            return "round_stale"  # an older announcement replayed: keep the newer one
        self.received.save_round(payload, announcement)
        self.receipts.on_round(announcement)
        log_event(
            log,
            "round_announced",
            round=announcement.round,
            status=announcement.status,
            cluster=announcement.cluster_for(self.site),
            base_version=announcement.base_version_for(self.site),
        )
        self.changed()
        # A new round may put this site in another cluster: its model may already be here.
        model = self.received.load_model(announcement.cluster_for(self.site), self.serve_best)
        if model is not None:
            self.model_for_me(model)
        return "round_kept"

    def _on_model(self, cluster: str, payload: bytes, best: bool = False) -> str:
        try:
            model = self.pin().open(payload, self.cloud_key, self.federation)
        except ProtocolError as exc:
            self.model_events.record(cluster, None, "refused", f"{exc.reason}: {exc}")
            log_event(
                log,
                "model_refused",
                logging.WARNING,
                cluster=cluster,
                reason=exc.reason,
                detail=str(exc)[:200],
            )
            return "model_refused"
        if model.cluster != cluster:
            self.model_events.record(cluster, model.version, "refused", "wrong_cluster")
            return "model_refused"
        self.received.save_model(payload, model, best)
        if not best:
            self.changed()  # a base model to train from may have arrived
        announcement = self.received.load_round()
        mine = announcement.cluster_for(self.site) if announcement else "global"
        if cluster == mine and best == self.serve_best:
            self.model_for_me(model)
        return "model_kept"


def rounds_refused(db: Database) -> int:
    """Round announcements refused so far (status shows it)."""
    return int(db.get_meta(ROUNDS_REFUSED_META) or 0)
