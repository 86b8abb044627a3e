"""Series assembly: complete after the quiet period, durable jobs, re-opening on new instances."""

from __future__ import annotations

import pytest

from ftlct.agent.events import SERIES_COMPLETED, EventBus
from ftlct.agent.metrics import AgentMetrics
from ftlct.agent.series.assembler import SeriesAssembler
from ftlct.agent.series.jobs import JobQueue
from ftlct.agent.series.series_index import SeriesIndex
from ftlct.agent.settings import SeriesSettings
from ftlct.agent.store.database import Database
from ftlct.agent.store.disk import DiskGuard
from ftlct.agent.store.instance_store import InstanceStore
from ftlct.agent.store.layout import DataDir
from tests.agent.dicom_files import ct_instance, part10_bytes

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


class Clock:
    def __init__(self, now: float = 1_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def pipeline(tmp_path):
    clock = Clock()
    data_dir = DataDir(tmp_path / "data").create()
    db = Database(data_dir.index)
    store = InstanceStore(
        data_dir, db, DiskGuard(lambda: 10**15, 0), clock=clock, series=SeriesIndex(db)
    )
    jobs = JobQueue(db, clock=clock)
    events = EventBus()
    completed = []
    events.subscribe(SERIES_COMPLETED, completed.append)
    assembler = SeriesAssembler(
        db,
        store.series,
        jobs,
        SeriesSettings(quiet_period_s=5.0),
        events,
        AgentMetrics(),
        clock=clock,
    )
    yield clock, store, jobs, assembler, completed
    db.close()


def test_series_completes_only_after_the_quiet_period(pipeline):
    clock, store, jobs, assembler, completed = pipeline
    series = "1.2.3.100"
    for n in range(3):
        store.put(part10_bytes(ct_instance(series, "1.2.3.1", instance_number=n)))
        clock.now += 2.0  # slices keep coming: never quiet for 5 s
        assert assembler.tick() == []
    clock.now += 3.0  # 5 s since the last one
    (done,) = assembler.tick()
    assert done["series_uid"] == series and done["n_instances"] == 3
    assert [c["series_uid"] for c in completed] == [series]
    job = jobs.claim()
    assert (job.series_uid, job.generation) == (series, 3)
    assert assembler.tick() == []  # completed once


def test_two_series_complete_independently(pipeline):
    clock, store, jobs, assembler, _ = pipeline
    store.put(part10_bytes(ct_instance("1.2.3.1")))
    clock.now += 4
    store.put(part10_bytes(ct_instance("1.2.3.2")))
    clock.now += 1
    assert [s["series_uid"] for s in assembler.tick()] == ["1.2.3.1"]
    clock.now += 4
    assert [s["series_uid"] for s in assembler.tick()] == ["1.2.3.2"]
    assert jobs.depth() == 2


def test_an_instance_for_an_inferred_series_reopens_it_for_a_new_job(pipeline):
    clock, store, jobs, assembler, _ = pipeline
    store.put(part10_bytes(ct_instance("1.2.3.7")))
    clock.now += 6
    assembler.tick()
    job = jobs.claim()
    with store.db.transaction() as conn:
        jobs.finish(conn, job)
        conn.execute("UPDATE series SET state = 'inferred'")
    result = store.put(part10_bytes(ct_instance("1.2.3.7")))  # the PACS resends more
    assert result.instance.series_reopened
    assert store.db.scalar("SELECT state FROM series") == "open"
    clock.now += 6
    assembler.tick()
    again = jobs.claim()
    assert (again.series_uid, again.generation) == ("1.2.3.7", 2)


def test_a_series_reopened_while_its_job_waits_keeps_one_job(pipeline):
    clock, store, jobs, assembler, _ = pipeline
    store.put(part10_bytes(ct_instance("1.2.3.8")))
    clock.now += 6
    assembler.tick()
    store.put(part10_bytes(ct_instance("1.2.3.8")))
    clock.now += 6
    assembler.tick()
    assert jobs.depth() == 1
    assert jobs.claim().generation == 2


def test_interrupted_jobs_return_to_the_queue_at_startup(pipeline):
    clock, store, jobs, assembler, _ = pipeline
    store.put(part10_bytes(ct_instance("1.2.3.9")))
    clock.now += 6
    assembler.tick()
    assert jobs.claim() is not None  # running when the process died
    assert jobs.claim() is None
    assert jobs.reset_interrupted() == 1
    assert jobs.claim().series_uid == "1.2.3.9"


def test_a_retried_job_waits_for_its_backoff(pipeline):
    clock, store, jobs, assembler, _ = pipeline
    store.put(part10_bytes(ct_instance("1.2.3.10")))
    clock.now += 6
    assembler.tick()
    job = jobs.claim()
    jobs.retry_later(job, "boom", delay_s=10)
    assert jobs.claim() is None
    clock.now += 10
    assert jobs.claim().attempts == 2
