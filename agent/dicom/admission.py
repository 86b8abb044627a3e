"""``dicom.max_associations``: open associations counted from A-ASSOCIATE to release.

pynetdicom counts an association as open until its thread has ended, which is
a few milliseconds after the release: a sender that releases and at once
associates again (one association per instance, with a limit of 1) was
refused "local limit exceeded", and the faster the agent sets an association
up, the more often. The SCP counts instead from the A-ASSOCIATE-RQ
(``EVT_REQUESTED``) to the first of released, aborted or connection closed,
and leaves pynetdicom's own count a margin above the limit as a backstop.
With receive worker processes the count is shared (``SharedAdmission``), so
the limit holds over all of them.
"""

from __future__ import annotations

import threading


def pynetdicom_backstop(limit: int) -> int:
    """pynetdicom's own limit: above ours by the associations still tearing down."""
    return 2 * limit + 1


class Admission:
    """The open associations of one process."""

    def __init__(self, limit: int):
        self.limit = limit
        self.open = 0
        self._lock = threading.Lock()

    def admit(self) -> bool:
        with self._lock:
            if self.open >= self.limit:
                return False
            self.open += 1
            return True

    def release(self) -> None:
        with self._lock:
            self.open = max(0, self.open - 1)


class SharedAdmission:
    """Open associations counted over every receive process, so one limit holds for all."""

    def __init__(self, counts, slot: int, limit: int):
        self.counts = counts  # multiprocessing.Array("i", workers), one slot per worker
        self.slot = slot
        self.limit = limit

    def admit(self) -> bool:
        with self.counts.get_lock():
            if sum(self.counts.get_obj()) >= self.limit:
                return False
            self.counts.get_obj()[self.slot] += 1
            return True

    def release(self) -> None:
        with self.counts.get_lock():
            counts = self.counts.get_obj()
            counts[self.slot] = max(0, counts[self.slot] - 1)
