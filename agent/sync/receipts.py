"""The cloud's answers to this site's updates: signed receipts, and rounds that closed without one.

A receipt on ``ftl/{F}/receipts/{site}`` is verified with the cloud key the
agent pins (``open_receipt``); it ends the resending of its update: the
outbox row goes and the verdict is recorded (``accepted``, ``duplicate``, or
``rejected`` with the cloud's reason, logged as a warning). A receipt that
does not verify, names another site, or an update this site never made is
ignored and counted by reason (``receipts_ignored`` in status): a forger
must not make the site drop an update it sent, and nothing a peer sends is
fatal. When ``rounds/current`` moves past an update's round (or its round is
no longer open), the update stops waiting: ``unreceipted``.
"""

from __future__ import annotations

import json
import logging

from ftlct.agent.logs import log_event
from ftlct.agent.store.database import Database
from ftlct.agent.sync.outbox import Outbox
from ftlct.protocol.errors import ProtocolError
from ftlct.protocol.exchange import open_receipt
from ftlct.protocol.messages import RoundAnnouncement

log = logging.getLogger(__name__)

IGNORED_META = "sync.receipts_ignored"  # JSON {reason: count}


class Receipts:
    def __init__(self, site: str, federation: str, cloud_key: str, db: Database, outbox: Outbox):
        self.site = site
        self.federation = federation
        self.cloud_key = cloud_key
        self.db = db
        self.outbox = outbox

    def on_receipt(self, topic_site: str | None, payload: bytes) -> str:
        """Handle one message from a receipts topic; returns its outcome, or ``ignored:reason``."""
        if topic_site != self.site:
            return self._ignored("wrong_topic", f"a receipt on the topic of {topic_site}")
        try:
            receipt = open_receipt(payload, self.cloud_key, self.federation, site=self.site)
        except ProtocolError as exc:
            return self._ignored(exc.reason, str(exc))
        if not self.outbox.receipted(receipt.update_id, receipt.outcome, receipt.reason):
            return self._ignored("unknown_update", f"no update {receipt.update_id} was made here")
        level = logging.WARNING if receipt.outcome == "rejected" else logging.INFO
        log_event(
            log,
            "update_" + receipt.outcome,
            level,
            update_id=receipt.update_id,
            round=receipt.round,
            reason=receipt.reason or None,
        )
        return receipt.outcome

    def on_round(self, announcement: RoundAnnouncement) -> None:
        """Updates of rounds that closed stop waiting for their receipt."""
        closed = self.outbox.close_rounds(announcement.round, announcement.status == "open")
        for update_id in closed:
            log_event(
                log,
                "update_unreceipted",
                logging.WARNING,
                update_id=update_id,
                detail=f"round closed (rounds/current is round {announcement.round}"
                f" {announcement.status}) before the cloud's receipt arrived",
            )

    def _ignored(self, reason: str, detail: str) -> str:
        counts = receipts_ignored(self.db)  # the sync loop is this meta key's only writer
        counts[reason] = counts.get(reason, 0) + 1
        self.db.set_meta(IGNORED_META, json.dumps(counts, sort_keys=True))
        log_event(log, "receipt_ignored", logging.WARNING, reason=reason, detail=detail[:200])
        return "ignored:" + reason


def receipts_ignored(db: Database) -> dict[str, int]:
    """Receipts ignored so far, by reason (status shows it)."""
    value = db.get_meta(IGNORED_META)
    return json.loads(value) if value else {}
