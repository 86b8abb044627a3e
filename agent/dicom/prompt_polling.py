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
them: the DUL thread's sleep waits on its socket instead (``select``), so an
arriving PDU is read at once, and the association thread's waits on its
DIMSE message queue, so a decoded C-STORE reaches our handler at once (and
that thread no longer wakes every 0.2 ms to find nothing). Each wait still
ends by its (possibly shortened) timeout, so whatever else pynetdicom checks
in those loops (a response to send, a release, an abort) is seen as before.
The switch is process-wide (the serve process has one SCP) and undone when
the SCP stops.
"""

from __future__ import annotations

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
        if isinstance(thread, Association) and _wait_for_message(thread, seconds):
            return  # the poll period, or less if a message came
        if self._clock() < self._busy_until:
            seconds = min(seconds, self.fast_s)
        if isinstance(thread, DULServiceProvider) and _wait_for_data(thread, seconds):
            return
        self._sleep(seconds)

    def __getattr__(self, name: str):
        return getattr(time, name)  # everything but sleep is the time module's


def _wait_for_data(dul: DULServiceProvider, seconds: float) -> bool:
    """Up to ``seconds`` until the DUL's socket has data; False if there is no socket to
    wait on (closed, or not yet there), for a plain sleep instead."""
    sock = getattr(dul.socket, "socket", None)
    if sock is None:
        return False
    try:
        if isinstance(sock, ssl.SSLSocket) and sock.pending():
            return True  # decrypted bytes already buffered: select would not see them
        select.select([sock], [], [], seconds)
    except (OSError, ValueError):  # closed by another thread meanwhile
        return False
    return True


def _wait_for_message(assoc: Association, seconds: float) -> bool:
    """Up to ``seconds`` until the association's DIMSE queue holds a message."""
    dimse = getattr(assoc, "dimse", None)
    queue = getattr(dimse, "msg_queue", None)
    if queue is None:
        return False
    with queue.not_empty:
        if not queue.queue:  # the deque itself: qsize() would take the held mutex again
            queue.not_empty.wait(seconds)
        if queue.queue:
            # put() wakes one waiter; if that was this one, a consumer blocked in
            # get() (an SCU waiting for its response) must not miss the message.
            queue.not_empty.notify()
    return True


def enable_prompt_polling(polling: PromptPolling) -> Callable[[], None]:
    """Route pynetdicom's reactor sleeps through ``polling``; returns the undo."""
    with _install_lock:
        for module in _MODULES:
            module.time = polling

    def undo() -> None:
        with _install_lock:
            for module in _MODULES:
                if module.time is polling:  # a later install stays in place
                    module.time = time

    return undo
