"""What came of every message on the cloud's topics, by outcome: the ``sync.messages`` meta.

The sync loop adds each batch's outcomes in one commit (``add``); ``ftl-agent
status`` reads them (``message_counts``). Junk is counted like the rest, so a
fuzz run can check that every message it sent was judged.
"""

from __future__ import annotations

import json
from collections import Counter

from ftlct.agent.store.database import Database

MESSAGES_META = "sync.messages"  # JSON {outcome: messages} over the data dir's life


def message_counts(db: Database) -> dict[str, int]:
    value = db.get_meta(MESSAGES_META)
    return json.loads(value) if value else {}


def add(db: Database, outcomes: Counter) -> None:
    """Add a batch of outcomes (the sync loop is the only writer of this key)."""
    counts = Counter(message_counts(db)) + outcomes
    db.set_meta(MESSAGES_META, json.dumps(dict(sorted(counts.items()))))
