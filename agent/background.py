"""The shape every background stage of the agent shares: a thread that works until stopped."""

from __future__ import annotations

import logging
import threading

from ftlct.protocol.errors import is_exit

log = logging.getLogger(__name__)


class BackgroundLoop:
    """A daemon thread calling ``run_once()`` until ``stop()``.

    ``run_once`` returns True when it did something (the loop goes straight on)
    or False when there was nothing to do (the loop sleeps ``idle_wait_s``, or
    until ``wake()``). An exception is logged and the loop carries on: one bad
    item must not stop a stage of the agent, nor a codec's panic (``is_exit``).
    """

    name = "background"
    idle_wait_s = 0.5

    def __init__(self) -> None:
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run_once(self) -> bool:
        raise NotImplementedError

    def thread_started(self) -> None:
        """Called first on the loop's own thread (e.g. to lower its priority)."""

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def wake(self) -> None:
        self._wake.set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 60.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout_s)

    @property
    def native_id(self) -> int | None:
        """The OS id of the loop's thread once it runs."""
        return self._thread.native_id if self._thread is not None else None

    def _run(self) -> None:
        self.thread_started()
        while not self._stop.is_set():
            try:
                worked = self.run_once()
            except BaseException as exc:
                if is_exit(exc):
                    raise
                log.exception("%s failed", self.name, extra={"event": f"{self.name}_error"})
                worked = False
            if not worked:
                self._wake.wait(self.idle_wait_s)
                self._wake.clear()
