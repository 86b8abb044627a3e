"""C-STOREs served on the association's network thread: the SCP's handler runs there for the
plain case, with the same status and bytes; every other message, every other handler, and a
service class that fails take pynetdicom's path or its answer, and nothing hangs."""

from __future__ import annotations

import threading

import pytest
from pynetdicom import AE, evt
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dul import DULServiceProvider
from pynetdicom.service_class import StorageServiceClass
from pynetdicom.sop_class import CTImageStorage, Verification

from ftlct.agent.dicom import inline_store
from ftlct.agent.dicom.inline_store import InlineStoreQueue, enable_inline_store
from tests.agent.dicom_files import ct_instance
from tests.agent.test_pdata_fast_path import large_slice, send, start_scp
from tests.support.ports import LOOPBACK, free_port

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def test_the_scp_serves_each_c_store_on_the_network_thread_and_stores_it(tmp_path):
    scp = start_scp(tmp_path)
    try:
        before = inline_store.served.served
        for seed in range(3):
            path = tmp_path / f"slice-{seed}.dcm"
            path.write_bytes(large_slice(seed))
            assert send(scp, path) == (0x0000, False)
        assert inline_store.served.served - before == 3
        assert scp.store.db.scalar("SELECT count(*) FROM instances") == 3
    finally:
        scp.stop(drain_timeout_s=2)
        scp.store.db.close()


def test_the_switch_is_undone_when_the_scp_stops(tmp_path):
    original = DIMSEServiceProvider.__init__
    scp = start_scp(tmp_path)
    assert DIMSEServiceProvider.__init__ is not original
    scp.stop(drain_timeout_s=2)
    scp.store.db.close()
    assert DIMSEServiceProvider.__init__ is original


# ---------------------------------------------------------------------- a bare pynetdicom AE
class Recorder:
    """A C-STORE handler that notes the thread it ran on and answers ``status`` (or raises)."""

    def __init__(self, status: int | None = 0x0000):
        self.status = status
        self.threads: list[threading.Thread] = []

    def handle(self, event):
        self.threads.append(threading.current_thread())
        if self.status is None:
            raise RuntimeError("handler failed")
        return self.status


def serve(handler, *extra_handlers):
    ae = AE(ae_title="SCP")
    ae.add_supported_context(CTImageStorage)
    ae.add_supported_context(Verification)
    port = free_port()
    server = ae.start_server(
        (LOOPBACK, port),
        block=False,
        evt_handlers=[(evt.EVT_C_STORE, handler), *extra_handlers],
    )
    return server, port


def c_store(port: int, dimse_timeout: float = 30.0):
    """(C-STORE status or None, C-ECHO status afterwards or None, association aborted).
    pynetdicom's SCU sees an A-ABORT only once its wait for the response ends: after
    ``dimse_timeout``."""
    ae = AE(ae_title="SCU")
    ae.dimse_timeout = dimse_timeout
    ae.add_requested_context(CTImageStorage)
    ae.add_requested_context(Verification)
    assoc = ae.associate(LOOPBACK, port, ae_title="SCP")
    assert assoc.is_established
    try:
        stored = assoc.send_c_store(ct_instance())
        store_status = int(stored.Status) if "Status" in stored else None
        echo_status = None
        if assoc.is_established:
            echoed = assoc.send_c_echo()
            echo_status = int(echoed.Status) if "Status" in echoed else None
        return store_status, echo_status, assoc.is_aborted
    finally:
        if assoc.is_established:
            assoc.release()


@pytest.fixture
def switched():
    undo = None

    def switch(handler_function):
        nonlocal undo
        undo = enable_inline_store(handler_function)

    yield switch
    if undo is not None:
        undo()


def test_the_named_handler_runs_on_the_network_thread(switched):
    recorder = Recorder()
    switched(Recorder.handle)
    server, port = serve(recorder.handle)
    try:
        assert c_store(port) == (0x0000, 0x0000, False)
        assert isinstance(recorder.threads[0], DULServiceProvider)
    finally:
        server.shutdown()


def test_another_handler_runs_on_the_association_thread_as_before(switched):
    switched(Recorder.handle)
    other = Recorder()

    def not_the_named_one(event):
        return other.handle(event)

    server, port = serve(not_the_named_one)
    before = inline_store.served.served
    try:
        assert c_store(port) == (0x0000, 0x0000, False)
        assert not isinstance(other.threads[0], DULServiceProvider)
        assert inline_store.served.served == before
    finally:
        server.shutdown()


def test_a_handler_that_raises_gets_pynetdicoms_failure_status_and_the_association_lives(
    switched,
):
    recorder = Recorder(status=None)
    switched(Recorder.handle)
    server, port = serve(recorder.handle)
    try:
        # 0xC211: pynetdicom's storage service class answers a handler exception so
        store_status, echo_status, aborted = c_store(port)
        assert (store_status, echo_status, aborted) == (0xC211, 0x0000, False)
        assert isinstance(recorder.threads[0], DULServiceProvider)
    finally:
        server.shutdown()


def test_a_service_class_that_raises_aborts_the_association_without_hanging(switched, monkeypatch):
    def broken(self, req, context):
        raise RuntimeError("service class failed")

    monkeypatch.setattr(StorageServiceClass, "SCP", broken)
    recorder = Recorder()
    switched(Recorder.handle)
    server, port = serve(recorder.handle)
    try:
        store_status, echo_status, aborted = c_store(port, dimse_timeout=2.0)
        assert (store_status, echo_status, aborted) == (None, None, True)
        # the server is not stuck: a new association is served (and aborted the same way)
        assert c_store(port, dimse_timeout=2.0)[2] is True
    finally:
        server.shutdown()


def test_only_a_c_store_request_is_served_inline():
    class Assoc:
        dul = threading.current_thread()
        is_acceptor = True
        _sent_release = False

        def __init__(self):
            self._accepted_cx = {1: object()}

        def get_handlers(self, event):
            return (Recorder.handle, None)

    class NotAStore:
        is_valid_request = True

    assert not inline_store.serve_inline(Assoc(), 1, NotAStore(), Recorder.handle)


def test_the_queue_queues_what_it_does_not_serve():
    class Dimse:
        class assoc:  # stands for the association object
            dul = None

    q = InlineStoreQueue(Dimse(), Recorder.handle)
    q.put((1, "not a request"))
    assert q.get(block=False) == (1, "not a request")
