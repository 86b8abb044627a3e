"""Shorter sleeps in pynetdicom's polling loops while C-STOREs are flowing.

pynetdicom hands a message between the association's network thread (DUL) and
its service thread by polling: each loop that found nothing to do sleeps 1 ms
(``time.sleep(0.001)`` in ``pynetdicom.association`` and ``pynetdicom.dul``).
One C-STORE on one association crosses those loops about three times (the
request read, handed to our handler, the response sent), and on a busy 2-core
box every sleep is also a wait for a CPU: the profile of ``ftl-agent serve``
showed both threads mostly asleep between instances.

While some association stored an instance in the last ``busy_window_s``, those
sleeps are cut to ``fast_s``; otherwise they stay as pynetdicom wrote them, so
an idle open association costs no more CPU than before.

Two of those waits need not poll at all, since what they wait for can wake
them. The DUL thread waits on its socket and on a wake-up descriptor (an
eventfd) that ``send_pdu`` signals, so an arriving PDU is read at once and a
response the association thread queued is sent at once, with no short
polling: a busy DUL used to wake every 0.2 ms to look for a response to
send, and four busy associations made that 20,000 wake-ups a second, each
one a turn at the GIL. The association thread waits on its DIMSE message
queue, so a decoded C-STORE reaches our handler at once (and that thread no
longer wakes every 0.2 ms to find nothing). Every primitive the DUL hands an
association (an A-RELEASE, an A-ABORT) also wakes that queue's waiter. Since
what they wait for wakes them, both waits last ``WOKEN_WAIT_S`` (20 ms) before
their loops look around anyway (an ARTIM timer, an idle timeout, a kill):
pynetdicom's 1 ms made each open association's two threads wake 2,000 times a
second, and on four busy associations those wake-ups were GIL hand-offs the
receive path queued behind (a scratch A/B on two cores, six passes in turns:
0.99 against 1.06 s a 300-slice pass, CPU 1.10 against 1.27 s). A requestor's
association thread (our SR sender's) keeps pynetdicom's period, since its
``send_*`` calls wait for that thread to pause. The switch is process-wide (the
serve process has one SCP) and undone when the SCP stops; a DUL thread
started before it (no wake-up descriptor) waits on its socket alone, for
the shortened period.
"""

from __future__ import annotations

import contextlib
import os
import select
import ssl
import threading
import time
from collections.abc import Callable

import pynetdicom.association
import pynetdicom.dul
from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider

FAST_SLEEP_S = 0.0002
BUSY_WINDOW_S = 0.25  # longer than a sender takes between two C-STOREs on a loaded box
POLL_SLEEP_S = 0.001  # pynetdicom's polling sleeps; longer sleeps are left alone
# How long a wait that what it waits for can wake lasts before its loop looks around anyway
WOKEN_WAIT_S = 0.02
_MODULES = (pynetdicom.association, pynetdicom.dul)
_install_lock = threading.Lock()


class PromptPolling:
    """pynetdicom's ``time``, with ``sleep`` shortened while ``busy()`` was called recently."""

    def __init__(
        self,
        fast_s: float = FAST_SLEEP_S,
        busy_window_s: float = BUSY_WINDOW_S,
        clock: Callable[[], float] = time.monotonic,
        sleeper: Callable[[float], None] = time.sleep,
    ):
        self.fast_s = fast_s
        self.busy_window_s = busy_window_s
        self._clock = clock
        self._sleep = sleeper
        self._busy_until = float("-inf")

    def busy(self) -> None:
        """An instance was stored: poll promptly for the next little while."""
        self._busy_until = self._clock() + self.busy_window_s

    def sleep(self, seconds: float) -> None:
        if seconds > POLL_SLEEP_S:
            self._sleep(seconds)
            return
        thread = threading.current_thread()
        if isinstance(thread, Association) and thread.is_acceptor:
            if _wait_for_message(thread, WOKEN_WAIT_S):
                return  # until a message or an ACSE primitive came, or the period ended
        elif isinstance(thread, Association) and _wait_for_message(thread, seconds):
            return  # the poll period, or less if a message came
        if self._clock() < self._busy_until:
            seconds = min(seconds, self.fast_s)
        if isinstance(thread, DULServiceProvider):
            # Woken by what it waits for, it waits pynetdicom's own period; else the shorter.
            wake = thread.__dict__.get(_WAKE_ATTRIBUTE)
            if _wait_for_data(thread, seconds if wake is None else WOKEN_WAIT_S, wake):
                return
        self._sleep(seconds)

    def __getattr__(self, name: str):
        return getattr(time, name)  # everything but sleep is the time module's


_WAKE_ATTRIBUTE = "_ftlct_wake"


class Wake:
    """An eventfd that ``send_pdu`` signals and the DUL thread waits on beside its socket."""

    def __init__(self):
        self.fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._lock = threading.Lock()
        self._closed = False

    def signal(self) -> None:
        with self._lock:  # never write to a closed (and perhaps re-used) descriptor number
            if not self._closed:
                os.eventfd_write(self.fd, 1)

    def drain(self) -> None:
        with self._lock, contextlib.suppress(BlockingIOError):
            if not self._closed:
                os.eventfd_read(self.fd)

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                os.close(self.fd)


def _signal_after(send_pdu: Callable) -> Callable:
    def send_pdu_and_wake(self, primitive) -> None:
        send_pdu(self, primitive)
        _wake(self)

    send_pdu_and_wake.__wrapped__ = send_pdu
    return send_pdu_and_wake


def _wake(dul) -> None:
    wake = dul.__dict__.get(_WAKE_ATTRIBUTE)
    if wake is not None:
        wake.signal()


def kill_dul_and_wake(self) -> None:
    """pynetdicom's ``kill_dul``, and the DUL thread told at once (not at its next timeout)."""
    self._kill_thread = True
    _wake(self)


def stop_dul_and_wake(self) -> bool:
    """pynetdicom's ``stop_dul`` (stop the reactor once it is back in Sta1, wait for it to
    end), with the DUL thread woken to see the request: an association that ends leaves
    the count of open associations as soon as before the wake-up existed."""
    if self.state_machine.current_state != "Sta1":
        return False
    self._kill_thread = True
    _wake(self)
    if threading.current_thread() is self:  # as pynetdicom would: never from its own thread
        return True
    while self.is_alive():
        self.join(self._run_loop_delay)  # returns the moment the thread ends
    return True


def _with_wake(run_reactor: Callable) -> Callable:
    def run_reactor_with_wake(self) -> None:
        wake = Wake()
        self.__dict__[_WAKE_ATTRIBUTE] = wake
        _wake_association_on_primitive(self)
        try:
            run_reactor(self)
        finally:
            self.__dict__.pop(_WAKE_ATTRIBUTE, None)
            wake.close()

    run_reactor_with_wake.__wrapped__ = run_reactor
    return run_reactor_with_wake


def _wake_association_on_primitive(dul: DULServiceProvider) -> None:
    """Each primitive the DUL hands its association (A-RELEASE, A-ABORT, ...) also wakes the
    association thread waiting on its DIMSE queue."""
    primitives = getattr(dul, "to_user_queue", None)
    if primitives is None:
        return
    put = primitives.put

    def put_and_wake(item, block=True, timeout=None) -> None:
        put(item, block, timeout)
        messages = getattr(getattr(dul.assoc, "dimse", None), "msg_queue", None)
        if messages is not None:
            with messages.not_empty:
                messages.not_empty.notify_all()

    primitives.put = put_and_wake


def _wait_for_data(dul: DULServiceProvider, seconds: float, wake: Wake | None = None) -> bool:
    """Up to ``seconds`` until the DUL's socket has data or (``wake``) a PDU was queued to
    send; False if there is no socket to wait on (closed, or not yet there), for a plain
    sleep instead."""
    sock = getattr(dul.socket, "socket", None)
    if sock is None:
        return False
    try:
        if isinstance(sock, ssl.SSLSocket) and sock.pending():
            return True  # decrypted bytes already buffered: poll would not see them
        poller = select.poll()  # not select(): descriptor numbers above 1023 are fine
        poller.register(sock, select.POLLIN)
        if wake is not None:
            poller.register(wake.fd, select.POLLIN)
        ready = poller.poll(seconds * 1000.0)
    except (OSError, ValueError):  # closed by another thread meanwhile
        return False
    if wake is not None and any(fd == wake.fd for fd, _ in ready):
        wake.drain()
    return True


def _wait_for_message(assoc: Association, seconds: float) -> bool:
    """Up to ``seconds`` until the association's DIMSE queue holds a message."""
    dimse = getattr(assoc, "dimse", None)
    queue = getattr(dimse, "msg_queue", None)
    if queue is None:
        return False
    primitives = getattr(getattr(assoc, "dul", None), "to_user_queue", None)
    with queue.not_empty:
        # the deques themselves: qsize() would take the held mutex again
        if not queue.queue and not getattr(primitives, "queue", None):
            queue.not_empty.wait(seconds)
        if queue.queue:
            # put() wakes one waiter; if that was this one, a consumer blocked in
            # get() (an SCU waiting for its response) must not miss the message.
            queue.not_empty.notify()
    return True


def enable_prompt_polling(polling: PromptPolling) -> Callable[[], None]:
    """Route pynetdicom's reactor sleeps through ``polling`` and give each DUL thread started
    from now on its wake-up descriptor; returns the undo."""
    with _install_lock:
        for module in _MODULES:
            module.time = polling
        switched = {
            "send_pdu": _signal_after(DULServiceProvider.send_pdu),
            "run_reactor": _with_wake(DULServiceProvider.run_reactor),
            "kill_dul": kill_dul_and_wake,
            "stop_dul": stop_dul_and_wake,
        }
        before = {name: getattr(DULServiceProvider, name) for name in switched}
        for name, value in switched.items():
            setattr(DULServiceProvider, name, value)

    def undo() -> None:
        with _install_lock:
            for module in _MODULES:
                if module.time is polling:  # a later install stays in place
                    module.time = time
            # Running DULs keep their descriptor until they end (the wrapper closes it).
            for name, value in switched.items():
                if getattr(DULServiceProvider, name) is value:
                    setattr(DULServiceProvider, name, before[name])

    return undo
