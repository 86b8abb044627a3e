"""The cloud's receipt for one site update: the only acknowledgement a site may act on.

A broker's PUBACK says the broker has the message, not that the cloud stored
it (a broker drops queued messages when a subscriber lags). So the cloud, once
it has committed its decision, publishes a signed ``receipt`` on
``ftl/{F}/receipts/{site}`` (QoS 1, not retained) for every update it could
attribute to that site (signature verified, on the site's own topic):

- ``accepted``: stored for ``round``; it will count in that round's aggregate.
- ``duplicate``: this ``update_id`` was stored before (a resend); nothing new
  was stored, the first copy counts. Sent again for every resend, so a site
  whose receipt was lost learns that its update landed.
- ``rejected``: refused for ``reason`` (a stable code, e.g. ``wrong_round``,
  ``norm_bound``); resending the same bytes will be refused again.

An update that cannot be attributed (malformed, unknown signer, bad
signature, posted on another site's topic) gets no receipt: a receipt must
never let a forger make a site drop an update it really sent.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ftlct.protocol.errors import ProtocolError
from ftlct.protocol.topics import NAME

OUTCOMES = ("accepted", "duplicate", "rejected")
RECEIPT_KEYS = {"site", "update_id", "round", "outcome", "reason"}
UPDATE_ID = re.compile(r"^[A-Za-z0-9_-]{8,64}$")
REASON = re.compile(r"^[a-z0-9_]{0,32}$")
MAX_ROUND = 2**53  # JSON-safe integers only


@dataclass(frozen=True)
class Receipt:
    site: str
    update_id: str
    round: int  # the round the update named
    outcome: str  # "accepted" | "duplicate" | "rejected"
    reason: str = ""  # empty unless rejected

    def to_payload(self) -> dict:
        return {
            "site": self.site,
            "update_id": self.update_id,
            "round": self.round,
            "outcome": self.outcome,
            "reason": self.reason,
        }

    @classmethod
    def from_payload(cls, payload: dict) -> Receipt:
        """The checked receipt; ``ProtocolError('malformed')`` for anything that does not fit."""
        if set(payload) != RECEIPT_KEYS:
            raise ProtocolError(
                "malformed", f"receipt keys {sorted(payload)} != {sorted(RECEIPT_KEYS)}"
            )
        site, update_id = payload["site"], payload["update_id"]
        round_, outcome, reason = payload["round"], payload["outcome"], payload["reason"]
        if not isinstance(site, str) or not NAME.match(site):
            raise ProtocolError("malformed", f"receipt site {site!r} is not a name")
        if not isinstance(update_id, str) or not UPDATE_ID.match(update_id):
            raise ProtocolError("malformed", "receipt update_id is not an update id")
        if not isinstance(round_, int) or isinstance(round_, bool) or not 0 <= round_ <= MAX_ROUND:
            raise ProtocolError("malformed", f"receipt round {round_!r} is not a round number")
        if outcome not in OUTCOMES:
            raise ProtocolError("malformed", f"receipt outcome {outcome!r} not in {OUTCOMES}")
        if not isinstance(reason, str) or not REASON.match(reason):
            raise ProtocolError("malformed", "receipt reason is not a reason code")
        if (outcome == "rejected") != bool(reason):
            raise ProtocolError(
                "malformed", "a receipt has a reason exactly when it is a rejection"
            )
        return cls(site, update_id, round_, outcome, reason)
