"""Series assembly: a series is complete once no instance arrived for the quiet period.

State lives in the series index (``SeriesIndex``: the store opens and re-opens
series as instances land); this stage only closes them and queues a job in the
same transaction, so a restart never loses a completion: series still ``open``
are judged against their persisted ``last_received_at`` on the next tick.
"""

from __future__ import annotations

import logging
import time

from ftlct.agent.background import BackgroundLoop
from ftlct.agent.events import SERIES_COMPLETED, EventBus
from ftlct.agent.logs import log_event
from ftlct.agent.metrics import AgentMetrics
from ftlct.agent.series.jobs import JobQueue
from ftlct.agent.series.series_index import SeriesIndex
from ftlct.agent.settings import SeriesSettings
from ftlct.agent.store.database import Database

log = logging.getLogger(__name__)


class SeriesAssembler(BackgroundLoop):
    name = "series-assembler"

    def __init__(
        self,
        db: Database,
        series: SeriesIndex,
        jobs: JobQueue,
        settings: SeriesSettings,
        events: EventBus,
        metrics: AgentMetrics,
        clock=time.time,
    ):
        super().__init__()
        self.idle_wait_s = settings.poll_interval_s
        self.db = db
        self.series = series
        self.jobs = jobs
        self.settings = settings
        self.events = events
        self.metrics = metrics
        self.clock = clock
        self.on_completed = None  # optional callable, e.g. to wake the inference worker

    def tick(self) -> list[dict]:
        """Close every series quiet for long enough and queue its inference; returns them."""
        cutoff = self.clock() - self.settings.quiet_period_s
        with self.db.transaction() as conn:
            completed = self.series.complete_quiet(conn, cutoff, self.clock())
            for series in completed:
                self.jobs.enqueue(conn, series["series_uid"], series["generation"])
        for series in completed:
            self.metrics.series_completed.inc()
            log_event(
                log,
                "series_completed",
                series_uid=series["series_uid"],
                n_instances=series["n_instances"],
            )
            self.events.emit(SERIES_COMPLETED, series)
        if completed and self.on_completed is not None:
            self.on_completed()
        return completed

    def open_count(self) -> int:
        return self.series.open_count()

    def run_once(self) -> bool:
        self.tick()
        return False  # poll again after the interval
