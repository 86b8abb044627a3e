"""pynetdicom's polling sleeps are short only while instances are flowing, and restorable."""

from __future__ import annotations

import os
import time

import pynetdicom.association
import pynetdicom.dul

from ftlct.agent.dicom.prompt_polling import PromptPolling, enable_prompt_polling


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def polling(clock):
    slept: list[float] = []
    return PromptPolling(
        fast_s=0.0002, busy_window_s=0.25, clock=clock, sleeper=slept.append
    ), slept


def test_polling_sleeps_stay_as_pynetdicom_wrote_them_while_idle():
    clock = Clock()
    prompt, slept = polling(clock)
    prompt.sleep(0.001)
    assert slept == [0.001]


def test_polling_sleeps_are_cut_for_the_busy_window_after_a_store_then_restored():
    clock = Clock()
    prompt, slept = polling(clock)
    prompt.busy()
    prompt.sleep(0.001)
    clock.now += 0.2
    prompt.sleep(0.001)
    clock.now += 0.1  # 0.3 s after the store: idle again
    prompt.sleep(0.001)
    assert slept == [0.0002, 0.0002, 0.001]


def test_longer_sleeps_are_never_shortened():
    clock = Clock()
    prompt, slept = polling(clock)
    prompt.busy()
    prompt.sleep(0.5)  # e.g. a retry back-off, not a polling loop
    assert slept == [0.5]


def test_enable_routes_both_reactors_through_it_and_undo_restores_the_time_module():
    prompt = PromptPolling()
    undo = enable_prompt_polling(prompt)
    try:
        assert pynetdicom.association.time is prompt
        assert pynetdicom.dul.time is prompt
        assert prompt.monotonic is time.monotonic  # the rest of time is untouched
    finally:
        undo()
    assert pynetdicom.association.time is time
    assert pynetdicom.dul.time is time


def test_undo_leaves_a_later_install_in_place():
    first, second = PromptPolling(), PromptPolling()
    undo_first = enable_prompt_polling(first)
    undo_second = enable_prompt_polling(second)
    undo_first()
    try:
        assert pynetdicom.dul.time is second
    finally:
        undo_second()
    assert pynetdicom.dul.time is time


class _InThread:
    """Run ``polling.sleep(seconds)`` inside a pynetdicom thread object; what the sleeper saw."""

    @staticmethod
    def run(thread_class, polling, seconds, *args):
        outcome = {}

        class Probe(thread_class):
            def run(self):
                outcome["returned"] = polling.sleep(seconds) is None

        probe = Probe(*args)
        return probe, outcome


def test_the_dul_thread_waits_on_its_socket_and_sleeps_only_without_one():
    import socket

    from pynetdicom.dul import DULServiceProvider

    slept: list[float] = []
    prompt = PromptPolling(sleeper=slept.append)
    left, right = socket.socketpair()
    right.sendall(b"\x04")  # a PDU's first byte is there
    probe, outcome = _InThread.run(DULServiceProvider, prompt, 0.001, None)
    probe.socket = type("AssociationSocket", (), {"socket": left})()
    probe.start()
    probe.join()
    without_socket, outcome_without = _InThread.run(DULServiceProvider, prompt, 0.001, None)
    without_socket.start()  # socket is None before the connection is set up
    without_socket.join()
    left.close()
    right.close()
    assert outcome == outcome_without == {"returned": True}
    assert slept == [0.001]  # only the thread without a socket slept


def test_the_association_thread_waits_on_its_message_queue_and_passes_a_wakeup_on():
    import queue

    from pynetdicom import AE
    from pynetdicom.association import Association

    slept: list[float] = []
    prompt = PromptPolling(sleeper=slept.append)
    probe, outcome = _InThread.run(Association, prompt, 0.001, AE(), "acceptor")
    probe.dimse.msg_queue.put((1, "message"))
    probe.start()
    probe.join()
    # a message already queued is still there for the reactor (or a blocked get()) to take
    assert probe.dimse.msg_queue.get(block=False) == (1, "message")
    assert outcome == {"returned": True}
    assert slept == []
    empty, outcome_empty = _InThread.run(Association, prompt, 0.001, AE(), "acceptor")
    empty.start()
    empty.join()  # nothing came: the wait ended by its timeout
    assert outcome_empty == {"returned": True}
    assert slept == []
    assert isinstance(empty.dimse.msg_queue, queue.Queue)


def test_a_message_that_woke_the_reactor_still_reaches_a_consumer_blocked_in_get():
    import threading

    from pynetdicom import AE
    from pynetdicom.association import Association

    from ftlct.agent.dicom.prompt_polling import _wait_for_message

    assoc = Association(AE(), "acceptor")
    messages = assoc.dimse.msg_queue

    def waiting(count: int) -> None:
        for _ in range(10_000):
            if len(messages.not_empty._waiters) >= count:
                return
            time.sleep(0.001)

    reactor = threading.Thread(target=_wait_for_message, args=(assoc, 30.0))
    reactor.start()
    waiting(1)  # the reactor waits first: put()'s single notify goes to it
    got = []
    consumer = threading.Thread(target=lambda: got.append(messages.get(timeout=30)))
    consumer.start()
    waiting(2)
    messages.put((1, "response"))
    consumer.join()
    reactor.join()
    assert got == [(1, "response")]


def test_a_dul_waiting_on_its_socket_wakes_when_a_pdu_is_queued_to_send():
    import socket
    import threading

    from pynetdicom.dul import DULServiceProvider

    from ftlct.agent.dicom.prompt_polling import Wake, _wait_for_data

    left, right = socket.socketpair()  # nothing ever arrives on it
    dul = DULServiceProvider.__new__(DULServiceProvider)
    dul.socket = type("AssociationSocket", (), {"socket": left})()
    wake = Wake()
    returned = threading.Event()
    waiter = threading.Thread(
        target=lambda: returned.set() if _wait_for_data(dul, 60.0, wake) else None
    )
    try:
        waiter.start()
        assert not returned.wait(0.2)  # no data, no PDU to send: still waiting
        wake.signal()  # send_pdu queued a response
        assert returned.wait(30.0)
        waiter.join()
        # the wake-up was consumed: the next wait ends by its timeout, not at once
        started = time.monotonic()
        assert _wait_for_data(dul, 0.05, wake)
        assert time.monotonic() - started >= 0.04
    finally:
        wake.close()
        left.close()
        right.close()
    wake.signal()  # after close: nothing is written to a descriptor number reused since
    wake.drain()


def test_every_dul_run_has_a_wake_up_that_send_pdu_signals_and_that_closes_when_it_ends():
    import queue

    from pynetdicom.dul import DULServiceProvider

    from ftlct.agent.dicom.prompt_polling import _WAKE_ATTRIBUTE, _signal_after, _with_wake

    seen = {}

    def reactor(self):  # stands for pynetdicom's run_reactor
        wake = self.__dict__[_WAKE_ATTRIBUTE]
        seen["wake"] = wake
        send_pdu_and_wake(self, "a primitive")
        seen["signalled"] = os.eventfd_read(wake.fd)  # what the DUL's wait would see

    def queue_it(self, primitive):  # stands for pynetdicom's send_pdu
        self.to_provider_queue.put(primitive)

    send_pdu_and_wake = _signal_after(queue_it)
    dul = DULServiceProvider.__new__(DULServiceProvider)
    dul.to_provider_queue = queue.Queue()
    _with_wake(reactor)(dul)
    assert seen["signalled"] == 1
    assert dul.to_provider_queue.get(block=False) == "a primitive"
    assert _WAKE_ATTRIBUTE not in dul.__dict__ and seen["wake"]._closed
    send_pdu_and_wake(dul, "after the reactor ended")  # queued, nothing to signal
    assert dul.to_provider_queue.get(block=False) == "after the reactor ended"


def test_enable_wraps_the_dul_and_undo_restores_it():
    from pynetdicom.dul import DULServiceProvider

    names = ("run_reactor", "send_pdu", "kill_dul", "stop_dul")
    before = [getattr(DULServiceProvider, name) for name in names]
    undo = enable_prompt_polling(PromptPolling())
    try:
        assert DULServiceProvider.run_reactor.__wrapped__ is before[0]
        assert DULServiceProvider.send_pdu.__wrapped__ is before[1]
        assert [getattr(DULServiceProvider, name) for name in names[2:]] != before[2:]
    finally:
        undo()
    assert [getattr(DULServiceProvider, name) for name in names] == before


def test_stopping_a_dul_wakes_it_at_once_instead_of_at_its_next_timeout():
    """An association that ends must leave the count of open associations promptly (a sender
    opening one association per instance against max_associations = 1 relies on it)."""
    import socket
    import threading

    from pynetdicom.dul import DULServiceProvider

    from ftlct.agent.dicom.prompt_polling import (
        _WAKE_ATTRIBUTE,
        Wake,
        _wait_for_data,
        kill_dul_and_wake,
        stop_dul_and_wake,
    )

    left, right = socket.socketpair()

    class Reactor(DULServiceProvider):
        def __init__(self):
            threading.Thread.__init__(self, daemon=True)
            self.socket = type("AssociationSocket", (), {"socket": left})()
            self.state_machine = type("StateMachine", (), {"current_state": "Sta1"})()
            self._run_loop_delay = 0.001
            self._kill_thread = False
            self.__dict__[_WAKE_ATTRIBUTE] = Wake()

        def run(self):
            while not self._kill_thread:  # each wait would last 60 s unless woken
                _wait_for_data(self, 60.0, self.__dict__[_WAKE_ATTRIBUTE])

    stopped, killed = Reactor(), Reactor()
    try:
        for reactor in (stopped, killed):
            reactor.start()
        time.sleep(0.1)  # both are waiting
        started = time.monotonic()
        assert stop_dul_and_wake(stopped) is True
        kill_dul_and_wake(killed)
        killed.join(30)
        assert time.monotonic() - started < 30
        assert not stopped.is_alive() and not killed.is_alive()
    finally:
        for reactor in (stopped, killed):
            reactor._kill_thread = True
            reactor.__dict__[_WAKE_ATTRIBUTE].signal()
            reactor.join(5)
            reactor.__dict__[_WAKE_ATTRIBUTE].close()
        left.close()
        right.close()
    busy = Reactor()
    busy.state_machine.current_state = "Sta6"  # not idle: pynetdicom's answer, no stop
    assert stop_dul_and_wake(busy) is False and not busy._kill_thread


def test_a_primitive_for_the_association_wakes_its_thread_waiting_on_its_messages():
    import threading

    from pynetdicom import AE
    from pynetdicom.association import Association
    from pynetdicom.pdu_primitives import A_RELEASE

    from ftlct.agent.dicom.prompt_polling import (
        _wait_for_message,
        _wake_association_on_primitive,
    )

    assoc = Association(AE(), "acceptor")
    _wake_association_on_primitive(assoc.dul)
    returned = threading.Event()
    reactor = threading.Thread(
        target=lambda: returned.set() if _wait_for_message(assoc, 60.0) else None
    )
    reactor.start()
    assert not returned.wait(0.2)  # no message, no primitive: still waiting
    assoc.dul.to_user_queue.put(A_RELEASE())  # the peer's A-RELEASE-RQ, as the DUL hands it on
    assert returned.wait(30.0)
    reactor.join()
    # one already waiting (handed on before the association thread began to wait): no wait
    started = time.monotonic()
    assert _wait_for_message(assoc, 60.0)
    assert time.monotonic() - started < 30.0


def test_an_acceptor_association_with_nothing_arriving_waits_longer_than_pynetdicoms_poll():
    from pynetdicom import AE
    from pynetdicom.association import Association

    from ftlct.agent.dicom.prompt_polling import WOKEN_WAIT_S

    assoc = Association(AE(), "acceptor")
    took = []

    def run() -> None:  # the prompt polling's sleep as the association's own thread calls it
        started = time.monotonic()
        PromptPolling().sleep(0.001)
        took.append(time.monotonic() - started)

    assoc.run = run
    assoc.start()
    assoc.join()
    assert took[0] >= WOKEN_WAIT_S * 0.9  # woken by a message or a primitive, else this long
