"""Lower the CPU priority of one thread (Linux per-thread niceness), for work that must yield.

On Linux every thread has its own nice value: ``setpriority(PRIO_PROCESS, tid)``
with the thread's native id changes that thread only, and threads it starts
inherit it. Raising one's own niceness needs no privilege (lowering it back
would), so a thread that must yield stays lowered for its life. Elsewhere
``PRIO_PROCESS`` would renice the whole process, so nothing is done there.
"""

from __future__ import annotations

import logging
import os
import sys
import threading

from ftlct.agent.logs import log_event

log = logging.getLogger(__name__)

MAX_NICENESS = 19


class ThreadNiceness:
    """The niceness ``increment`` above the creating thread's, applied by ``apply()`` to each
    thread that calls it. The target is fixed at creation, so a thread that inherited it
    (a pool worker started by a lowered thread) is not lowered twice."""

    def __init__(self, increment: int):
        self.increment = max(0, int(increment))
        self.supported = sys.platform.startswith("linux") and hasattr(os, "setpriority")
        self.target: int | None = None
        if self.increment and self.supported:
            base = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
            self.target = min(MAX_NICENESS, base + self.increment)

    def apply(self) -> None:
        """Give the calling thread the target niceness (no-op when there is none)."""
        if self.target is None:
            return
        tid = threading.get_native_id()
        try:
            if os.getpriority(os.PRIO_PROCESS, tid) < self.target:
                os.setpriority(os.PRIO_PROCESS, tid, self.target)
        except OSError as exc:  # a sandbox may forbid it: the work still runs, unlowered
            log_event(log, "niceness_not_set", logging.WARNING, error=str(exc))


def niceness_of(native_id: int) -> int:
    """The nice value of one thread of this process (Linux)."""
    return os.getpriority(os.PRIO_PROCESS, native_id)
