"""C-STORE response statuses (PS3.4 Annex B.2.3) for each store outcome."""

from __future__ import annotations

from ftlct.agent.store.instance_store import Outcome

SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700  # Refused: Out of Resources
DATASET_MISMATCH = 0xA900  # Error: Data Set does not match SOP Class
CANNOT_UNDERSTAND = 0xC000  # Error: Cannot understand

STATUS_FOR = {
    Outcome.STORED: SUCCESS,
    Outcome.DUPLICATE: SUCCESS,
    Outcome.REPLACED: SUCCESS,
    Outcome.CONFLICT: SUCCESS,  # the first copy is stored; PACS answer success too
    Outcome.OUT_OF_RESOURCES: OUT_OF_RESOURCES,
    Outcome.MISMATCH: DATASET_MISMATCH,
    Outcome.UNREADABLE: CANNOT_UNDERSTAND,
}


def store_status(outcome: Outcome) -> int:
    return STATUS_FOR[outcome]
