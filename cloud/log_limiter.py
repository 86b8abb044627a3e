"""Rate-limited logging: a flood of bad messages must not become a flood of log lines.

Per key (a rejection reason, an exception type) at most ``burst`` lines per
``period_s``; the rest are counted and summarised in one line when the next
period begins. The counters in the state store stay exact whatever is logged.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class _Window:
    started: float
    logged: int = 0
    suppressed: int = 0


class LogLimiter:
    def __init__(
        self,
        logger: logging.Logger,
        period_s: float = 60.0,
        burst: int = 10,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.logger = logger
        self.period_s = period_s
        self.burst = burst
        self.clock = clock
        self._windows: dict[str, _Window] = {}

    def log(self, level: int, key: str, message: str, *args, **kwargs) -> bool:
        """Log ``message`` unless ``key`` had ``burst`` lines this period; True if it was logged."""
        now = self.clock()
        window = self._windows.get(key)
        if window is None or now - window.started >= self.period_s:
            if window is not None and window.suppressed:
                self.logger.log(
                    level,
                    "%d more %s messages not logged in the last %.0f s",
                    window.suppressed,
                    key,
                    now - window.started,
                )
            window = self._windows[key] = _Window(now)
        if window.logged >= self.burst:
            window.suppressed += 1
            return False
        window.logged += 1
        self.logger.log(level, message, *args, **kwargs)
        return True

    def warning(self, key: str, message: str, *args, **kwargs) -> bool:
        return self.log(logging.WARNING, key, message, *args, **kwargs)
