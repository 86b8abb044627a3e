"""Rejection logging is rate-limited per key, and says how much it left out."""

from __future__ import annotations

import logging

from ftlct.cloud.log_limiter import LogLimiter


def test_a_flood_logs_a_burst_then_one_summary_per_period(caplog):
    now = [0.0]
    limiter = LogLimiter(
        logging.getLogger("test.limiter"), period_s=60, burst=3, clock=lambda: now[0]
    )
    with caplog.at_level(logging.WARNING, "test.limiter"):
        logged = [limiter.warning("malformed", "bad message %d", i) for i in range(1000)]
        assert sum(logged) == 3 and logged[:3] == [True] * 3
        assert limiter.warning("norm_bound", "another reason has its own budget")
        now[0] = 61.0
        assert limiter.warning("malformed", "a new period")
    lines = [record.getMessage() for record in caplog.records]
    assert lines[:3] == ["bad message 0", "bad message 1", "bad message 2"]
    assert "997 more malformed messages not logged in the last 61 s" in lines
    assert lines[-1] == "a new period" and len(lines) == 6
