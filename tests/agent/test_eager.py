"""Eager embedding yields to receiving (lowered threads, deferred while an association receives)
and to series jobs (paused, its onnxruntime call cancelled)."""

from __future__ import annotations

import os
import threading
import time

import pytest

from ftlct.agent.inference.eager import IDLE_BATCHES_PER_CALL
from ftlct.agent.thread_priority import ThreadNiceness, niceness_of
from tests.agent.dicom_files import ct_instance
from tests.agent.pipeline import Agent

pytestmark = [
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.skipif(not ThreadNiceness(1).supported, reason="per-thread niceness is Linux's"),
]

SERIES = "1.2.826.0.1.3680043.8.498.11"
STUDY = "1.2.826.0.1.3680043.8.498.12"


def _wait_for(condition, what: str, bound_s: float = 60.0) -> None:
    deadline = time.monotonic() + bound_s
    while not condition():
        assert time.monotonic() < deadline, f"{what} did not happen within {bound_s} s"
        time.sleep(0.02)


@pytest.fixture
def agent(tmp_path, model_dir):
    agent = Agent(tmp_path / "data", model_dir.path, eager_niceness=5)
    yield agent
    agent.eager.stop()
    agent.worker.stop()
    agent.close()


def test_eager_threads_run_lowered_and_the_job_thread_does_not(agent):
    base = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    agent.eager.start()
    agent.worker.start()
    for n in range(3):
        agent.eager.instance_arrived(
            agent.put(ct_instance(SERIES, STUDY, instance_number=n)).instance
        )
    agent.now += 1  # a batch not full waits briefly for more arrivals
    _wait_for(lambda: agent.slices_embedded() == 3, "eager embedding")
    decode_threads = list(agent.eager.embedder._pool._threads)
    assert decode_threads
    want = min(19, base + 5)
    assert niceness_of(agent.eager.native_id) == want
    assert [niceness_of(t.native_id) for t in decode_threads] == [want] * len(decode_threads)

    agent.now += 6
    agent.assembler.tick()
    agent.worker.wake()
    _wait_for(lambda: agent.results, "the series result")
    assert niceness_of(agent.worker.native_id) == base  # the job ran unlowered
    assert niceness_of(threading.get_native_id()) == base
    assert agent.results[0].n_slices == 3 and agent.slices_embedded() == 3


def test_no_eager_batch_starts_while_a_job_runs(agent):
    for n in range(2):
        agent.eager.instance_arrived(
            agent.put(ct_instance(SERIES, STUDY, instance_number=n)).instance
        )
    agent.now += 1
    with agent.eager.job_running():
        assert not agent.eager.run_once()
        assert agent.slices_embedded() == 0
    assert agent.eager.run_once()  # the arrivals waited for the job to end
    assert agent.slices_embedded() == 2


def _arrive(agent, count: int) -> None:
    for n in range(count):
        instance = agent.put(ct_instance(SERIES, STUDY, instance_number=n)).instance
        agent.eager.instance_arrived(instance)


def test_arrivals_wait_while_an_association_receives_but_no_longer_than_twice_the_defer(agent):
    agent.eager.receiving = lambda: True
    agent.eager.seconds_per_slice = 0.01  # four slices: far less work than eager_defer_s
    _arrive(agent, 4)  # a full batch: only the deferral holds it
    agent.now += 2 * agent.eager.settings.eager_defer_s - 0.5
    assert not agent.eager.run_once()
    assert agent.slices_embedded() == 0
    agent.now += 1
    assert agent.eager.run_once()
    assert agent.slices_embedded() == 4


def test_arrivals_wait_while_receiving_only_until_they_add_up_to_the_defer_in_work(agent):
    agent.eager.receiving = lambda: True
    agent.eager.seconds_per_slice = agent.eager.settings.eager_defer_s / 5
    _arrive(agent, 4)
    assert not agent.eager.run_once()  # four slices: less work than eager_defer_s
    _arrive(agent, 1)
    assert agent.eager.run_once()  # five: as much as eager_defer_s, embedded while receiving
    assert agent.slices_embedded() == 4
    assert agent.eager.seconds_per_slice != agent.eager.settings.eager_defer_s / 5  # measured


def test_an_arrival_wakes_the_loop_only_when_nothing_is_receiving(agent):
    agent.eager.receiving = lambda: True
    _arrive(agent, 1)
    assert not agent.eager._wake.is_set()  # it looks again within idle_wait_s
    agent.eager.receiving = lambda: False
    _arrive(agent, 1)
    assert agent.eager._wake.is_set()


def test_arrivals_are_embedded_at_once_when_nothing_is_receiving(agent):
    agent.eager.receiving = lambda: False
    _arrive(agent, 4)
    assert agent.eager.run_once()
    assert agent.slices_embedded() == 4


def test_with_nothing_receiving_one_call_embeds_several_batches_decoded_ahead(agent):
    agent.eager.receiving = lambda: False
    batch = agent.eager.settings.batch_size
    _arrive(agent, IDLE_BATCHES_PER_CALL * batch + 1)
    assert agent.eager.run_once()
    assert agent.slices_embedded() == IDLE_BATCHES_PER_CALL * batch  # not one batch a call
    agent.now += 1
    assert agent.eager.run_once()
    assert agent.slices_embedded() == IDLE_BATCHES_PER_CALL * batch + 1


def test_a_batch_not_full_waits_briefly_for_more_arrivals(agent):
    agent.eager.instance_arrived(agent.put(ct_instance(SERIES, STUDY)).instance)
    assert not agent.eager.run_once()
    agent.now += 1
    assert agent.eager.run_once()
    assert agent.slices_embedded() == 1


def test_a_job_cancels_the_eager_call_in_flight(agent, monkeypatch):
    started, seen = threading.Event(), []

    def embed(snapshot, instances, should_stop, run_options):
        seen.append(run_options)
        started.set()
        while not run_options.terminate:  # as onnxruntime checks its terminate flag
            time.sleep(0.001)
        raise RuntimeError("Exiting due to terminate flag being set to true.")

    monkeypatch.setattr(agent.eager.embedder, "embed", embed)
    agent.eager.instance_arrived(agent.put(ct_instance(SERIES, STUDY)).instance)
    agent.now += 1
    outcome = []
    batch = threading.Thread(target=lambda: outcome.append(agent.eager.run_once()))
    batch.start()
    assert started.wait(30)
    with agent.eager.job_running():
        batch.join(30)
        assert outcome == [True]  # cancelled, not failed
    assert seen[0].terminate


def test_an_eager_failure_that_no_job_caused_is_raised(agent, monkeypatch):
    def embed(snapshot, instances, should_stop, run_options):
        raise RuntimeError("onnxruntime broke")

    monkeypatch.setattr(agent.eager.embedder, "embed", embed)
    agent.eager.instance_arrived(agent.put(ct_instance(SERIES, STUDY)).instance)
    agent.now += 1
    with pytest.raises(RuntimeError, match="onnxruntime broke"):
        agent.eager.run_once()


def test_thread_niceness_is_not_added_twice_to_an_inheriting_thread():
    niceness = ThreadNiceness(3)
    seen = []

    def lowered():
        niceness.apply()
        child = threading.Thread(
            target=lambda: (niceness.apply(), seen.append(niceness_of(threading.get_native_id())))
        )
        child.start()
        child.join()

    thread = threading.Thread(target=lowered)
    thread.start()
    thread.join()
    assert seen == [niceness.target]
    assert ThreadNiceness(0).target is None  # nothing to apply
