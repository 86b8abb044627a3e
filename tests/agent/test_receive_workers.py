"""Receiving in worker processes (``dicom.receive_processes``): the same durability, one
association limit over all workers, workers replaced when they die, an orderly stop."""

from __future__ import annotations

import multiprocessing
import os
import re
import signal
import socket
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from ftlct.agent.dicom.admission import Admission, SharedAdmission
from ftlct.agent.dicom.receive_workers import ReceiveWorkers, _Worker
from ftlct.agent.events import EventBus
from ftlct.agent.metrics import AgentMetrics
from ftlct.agent.settings import AgentSettings, DicomSettings, StorageSettings
from tests.agent.dicom_files import write_series
from tests.support.dicom_peers import running_agent, send_with_pynetdicom, wait_for
from tests.support.ports import LOOPBACK, free_port

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
TWO_WORKERS = {"FTLCT_AGENT_DICOM_RECEIVE_PROCESSES": "2"}


def worker_pids(agent) -> list[int]:
    """The serve process's receive workers (its spawned children; not the resource tracker)."""
    pids = []
    for task in Path(f"/proc/{agent.process.pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            try:
                command = Path(f"/proc/{child}/cmdline").read_bytes()
            except OSError:
                continue
            if b"spawn_main" in command:
                pids.append(int(child))
    return sorted(pids)


def wait_until(fetch, ok, timeout: float):
    """``fetch()``'s value once ``ok(value)`` holds."""

    def ready():
        value = fetch()
        return value if ok(value) else None

    return wait_for(ready, timeout)


def two_workers(agent, timeout: float = 30, without: int | None = None) -> list[int]:
    return wait_until(
        lambda: worker_pids(agent), lambda p: len(p) == 2 and without not in p, timeout
    )


def metric(port: int, name: str) -> float:
    text = urllib.request.urlopen(f"http://{LOOPBACK}:{port}/metrics", timeout=10).read().decode()
    match = re.search(rf"^{re.escape(name)} ([0-9.e+]+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def send_concurrently(series: list[list[Path]], port: int) -> dict[Path, int | None]:
    statuses: dict[Path, int | None] = {}
    errors = []

    def send(paths):
        try:
            statuses.update(send_with_pynetdicom(paths, port))
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=send, args=(paths,)) for paths in series]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors
    return statuses


def test_four_associations_over_two_workers_are_stored_counted_and_inferred(tmp_path, model_path):
    series = [write_series(tmp_path / f"series-{k}", 6) for k in range(4)]
    metrics_port = free_port()
    env = TWO_WORKERS | {"FTLCT_AGENT_METRICS_PORT": str(metrics_port)}
    with running_agent(tmp_path, model_path, env=env) as agent:
        assert len(two_workers(agent)) == 2
        statuses = send_concurrently(series, agent.port)
        assert set(statuses.values()) == {0x0000} and len(statuses) == 24
        assert len(agent.stored_sop_uids()) == 24  # acknowledged = indexed
        results = wait_until(agent.results, lambda r: len(r) == 4, 120)
        assert sorted(r["n_instances"] for r in results) == [6, 6, 6, 6]
        # the workers' counts and stored events reached the serve process
        received = 'ftlct_agent_instances_received_total{outcome="stored"}'
        assert metric(metrics_port, received) == 24
        assert metric(metrics_port, "ftlct_agent_bytes_received_total") > 0
        assert metric(metrics_port, "ftlct_agent_slices_embedded_total") >= 24
        assert "receive_processes=2" in agent.log()


def test_max_associations_is_one_limit_over_every_worker(tmp_path, model_path):
    from pynetdicom import AE
    from pynetdicom.sop_class import CTImageStorage, Verification

    # The start-up probe's bare connection counts as an association until its A-ASSOCIATE-RQ
    # times out (pynetdicom's own count): a short ACSE timeout ends it.
    env = TWO_WORKERS | {
        "FTLCT_AGENT_DICOM_MAX_ASSOCIATIONS": "1",
        "FTLCT_AGENT_DICOM_ACSE_TIMEOUT_S": "1",
    }
    with running_agent(tmp_path, model_path, env=env) as agent:
        ae = AE(ae_title="TESTSCU")
        ae.add_requested_context(Verification)
        ae.add_requested_context(CTImageStorage)
        first = wait_until(
            lambda: ae.associate(LOOPBACK, agent.port, ae_title="FTLCT"),
            lambda assoc: assoc.is_established,
            30,
        )
        seconds = [ae.associate(LOOPBACK, agent.port, ae_title="FTLCT") for _ in range(4)]
        # whichever worker took each one, the one open association filled the limit
        assert all(s.is_rejected for s in seconds)
        first.release()

        def accepted():
            assoc = ae.associate(LOOPBACK, agent.port, ae_title="FTLCT")
            if assoc.is_established:
                assoc.release()
                return True
            return None

        assert wait_for(accepted, timeout=30)
        # each refusal was the shared count's, whichever worker took the connection
        assert agent.log().count("dicom.max_associations (1) open") == 4


def test_a_killed_worker_loses_only_the_unacknowledged_and_is_replaced(tmp_path, model_path):
    before = write_series(tmp_path / "before", 5)
    after = [write_series(tmp_path / f"after-{k}", 4) for k in range(2)]
    with running_agent(tmp_path, model_path, env=TWO_WORKERS) as agent:
        pids = two_workers(agent)
        assert set(send_with_pynetdicom(before, agent.port).values()) == {0x0000}
        os.kill(pids[0], signal.SIGKILL)
        replaced = two_workers(agent, 60, without=pids[0])
        assert pids[1] in replaced
        assert "receive_worker_died" in agent.log()
        statuses = send_concurrently(after, agent.port)
        assert set(statuses.values()) == {0x0000}
        assert len(agent.stored_sop_uids()) == 13


def test_sigterm_to_the_whole_process_group_stops_every_worker_in_order(tmp_path, model_path):
    files = write_series(tmp_path / "series", 3)
    with running_agent(tmp_path, model_path, env=TWO_WORKERS) as agent:
        pids = two_workers(agent)
        assert set(send_with_pynetdicom(files, agent.port).values()) == {0x0000}
        assert agent.terminate(timeout=60) == 0  # SIGTERM to the group, as systemd does
        log = agent.log()
    # each worker stopped its server itself (it ignores SIGTERM), then the serve process
    # (the start-up probe's connection, which never sent an A-ASSOCIATE-RQ, may be aborted)
    assert len(re.findall(r"dicom\.scp: dicom_stopped aborted_associations=\d", log)) == 2
    assert "receive_worker_killed" not in log and "receive_worker_died" not in log
    assert "agent_stopped" in log
    for pid in pids:
        assert (
            not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
        )


def test_a_port_in_use_fails_the_start_with_one_line_and_no_worker_left(tmp_path):
    taken = socket.create_server((LOOPBACK, 0))
    port = taken.getsockname()[1]
    settings = AgentSettings(
        dicom=DicomSettings(host=LOOPBACK, port=port, receive_processes=2),
        storage=StorageSettings(data_dir=tmp_path / "data"),
    )
    workers = ReceiveWorkers(settings, EventBus(), AgentMetrics(), 2)
    try:
        with pytest.raises(OSError, match=rf"DICOM on {LOOPBACK}:{port}: .*in use"):
            workers.start()
    finally:
        taken.close()
    assert workers.worker_pids() == [] and not workers.running


def test_one_receive_process_is_the_in_process_scp():
    settings = AgentSettings(dicom=DicomSettings(receive_processes=1))
    with pytest.raises(ValueError, match="1 receives in-process"):
        ReceiveWorkers(settings, EventBus(), AgentMetrics(), 1)


def test_a_free_space_function_cannot_reach_worker_processes(tmp_path, model_path):
    from ftlct.agent.service import AgentService
    from ftlct.agent.settings import InferenceSettings

    settings = AgentSettings(
        dicom=DicomSettings(port=free_port(), receive_processes=2),
        storage=StorageSettings(data_dir=tmp_path / "data"),
        inference=InferenceSettings(model_dir=model_path),
    )
    with pytest.raises(ValueError, match="cannot reach receive worker processes"):
        AgentService(settings, free_bytes=lambda: 10**12)


def test_admission_counts_every_slot_against_one_limit():
    counts = multiprocessing.get_context("spawn").Array("i", 2)
    first, second = SharedAdmission(counts, 0, 3), SharedAdmission(counts, 1, 3)
    assert [first.admit(), second.admit(), second.admit()] == [True, True, True]
    assert not first.admit() and not second.admit()  # 3 open over both slots
    second.release()
    assert first.admit()
    first.release()
    first.release()
    first.release()  # more releases than admissions never go below zero
    assert list(counts) == [0, 1]


def test_one_process_counts_against_its_limit_and_never_below_zero():
    admission = Admission(2)
    assert [admission.admit(), admission.admit(), admission.admit()] == [True, True, False]
    admission.release()
    admission.release()
    admission.release()
    assert admission.open == 0 and admission.admit()


def test_two_threads_waiting_for_one_worker_both_see_it_end():
    # the reader thread and stop() wait together; unguarded, waitpid() loses the race
    # for one of them about half the time and stop() kills a worker that already ended
    context = multiprocessing.get_context("fork")
    for _ in range(40):
        process = context.Process(target=time.sleep, args=(0.01,))
        process.start()
        worker = _Worker(0, process, conn=None)
        ended: list[bool] = []

        def wait_for(worker: _Worker = worker, ended: list[bool] = ended) -> None:
            ended.append(worker.wait(10.0))

        waiters = [threading.Thread(target=wait_for) for _ in "ab"]
        for waiter in waiters:
            waiter.start()
        for waiter in waiters:
            waiter.join()
        assert ended == [True, True] and not worker.alive()
