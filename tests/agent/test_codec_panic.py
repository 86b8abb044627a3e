"""A codec's panic on a hostile stream is that slice's failure, never the death of a stage.

The full DICOM fuzz run found it: a bit flip in an RLE stream makes
pylibjpeg-rle's Rust decoder panic, which pyo3 raises as ``PanicException``,
a ``BaseException``. The inference and eager-embedding threads caught only
``Exception`` and died with it, and every later series waited forever.
"""

from __future__ import annotations

import threading

import pytest

from ftlct.agent.background import BackgroundLoop
from ftlct.export.preprocessing import read_slices_from_bytes
from ftlct.protocol.errors import is_exit
from tests.agent.dicom_files import ct_instance
from tests.agent.dicom_mutations import PANICKING_CASES, codec_panic_cases
from tests.agent.pipeline import Agent
from tests.support.panic import PanicException

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

SERIES = "1.2.826.0.1.3680043.8.498.71"
STUDY = "1.2.826.0.1.3680043.8.498.72"


@pytest.fixture(scope="module")
def panicking():
    """The fuzz cases on which this machine's RLE decoder panics (skip if it no longer does)."""
    cases = codec_panic_cases()
    assert [c.name for c in cases] == list(PANICKING_CASES)
    panics = []
    for case in cases:
        try:
            read_slices_from_bytes(case.data)
        except Exception:
            continue
        except BaseException as exc:
            assert not is_exit(exc)
            panics.append(case)
    if not panics:
        pytest.skip("pylibjpeg-rle no longer panics on these streams; nothing to guard here")
    return panics


@pytest.fixture
def agent(tmp_path, model_dir):
    agent = Agent(tmp_path / "data", model_dir.path)
    yield agent
    agent.close()


def test_the_panic_is_not_an_exception(panicking):
    with pytest.raises(BaseException) as caught:
        read_slices_from_bytes(panicking[0].data)
    assert not isinstance(caught.value, Exception)
    assert type(caught.value).__name__ == "PanicException"


def test_a_panicking_series_is_skipped_and_the_next_series_is_inferred(agent, panicking):
    stored = agent.store.put(panicking[0].data)
    assert stored.ok, stored.reason
    agent.eager.instance_arrived(stored.instance)
    agent.now += 30  # long past the eager embedder's wait for a fuller batch
    assert agent.eager.run_once()  # eager embedding meets the panic first, and lives
    assert agent.complete_and_run()
    row = agent.db.query_one("SELECT state, reason FROM series")
    assert row["state"] == "skipped" and "PanicException" in row["reason"]
    assert agent.results == []

    for n in range(2):
        agent.put(ct_instance(SERIES, STUDY, instance_number=n + 1))
    assert agent.complete_and_run()
    (result,) = agent.results
    assert result.series_uid == SERIES and result.n_slices == 2


def test_a_job_that_panics_is_retried_not_fatal(agent, monkeypatch):
    def panics(job, started):
        raise PanicException("index out of bounds")

    monkeypatch.setattr(agent.worker, "_infer_series", panics)
    agent.put(ct_instance(SERIES, STUDY))
    assert agent.complete_and_run()
    job = agent.db.query_one("SELECT state, attempts, error FROM jobs")
    assert (job["state"], job["attempts"]) == ("pending", 1)
    assert "PanicException: index out of bounds" in job["error"]


class Flaky(BackgroundLoop):
    name = "flaky"
    idle_wait_s = 0.01

    def __init__(self, first: BaseException):
        super().__init__()
        self.first: BaseException | None = first
        self.calls = 0
        self.went_on = threading.Event()

    def run_once(self) -> bool:
        self.calls += 1
        if self.first is not None:
            first, self.first = self.first, None
            raise first
        self.went_on.set()
        return False


def test_a_background_loop_outlives_a_panic():
    loop = Flaky(PanicException("panicked at src/lib.rs"))
    loop.start()
    try:
        assert loop.went_on.wait(10)
        assert loop._thread.is_alive() and loop.calls >= 2
    finally:
        loop.stop()


def test_a_background_loop_still_ends_on_an_exit():
    loop = Flaky(SystemExit(0))
    loop.start()
    loop._thread.join(10)
    assert not loop._thread.is_alive() and loop.calls == 1
    assert not loop.went_on.is_set()
