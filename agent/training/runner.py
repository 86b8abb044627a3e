"""Run a local round in a child process, so ``serve`` never imports torch and DICOM keeps its core.

The child is ``python -c 'child_main()'`` at lower CPU priority; it gets the
settings object and the data dir on stdin (pickled: same user, same code) and
prints its ``RoundOutcome`` as one JSON line. It shares nothing with serve but
the SQLite files (WAL: serve keeps receiving while it reads embeddings).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pickle
import subprocess
import sys
from pathlib import Path

from ftlct.agent.settings import AgentSettings
from ftlct.agent.training.local_round import RoundOutcome

log = logging.getLogger(__name__)

CHILD = "from ftlct.agent.training.runner import child_main; child_main()"
NICENESS = 10


class TrainingRunner:
    def __init__(self, settings: AgentSettings, data_root: Path):
        self.settings = settings
        self.data_root = Path(data_root)
        self._process: subprocess.Popen | None = None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        if self.running:
            return
        self._process = subprocess.Popen(
            [sys.executable, "-c", CHILD],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=None,  # the child's log lines join serve's
        )
        assert self._process.stdin is not None
        self._process.stdin.write(pickle.dumps((self.settings, str(self.data_root))))
        self._process.stdin.close()

    def poll(self) -> RoundOutcome | None:
        """The outcome once the child has exited (then the runner is free again), else None."""
        process = self._process
        if process is None or process.poll() is None:
            return None
        self._process = None
        output = process.stdout.read().decode(errors="replace") if process.stdout else ""
        process.stdout.close()
        for line in reversed(output.splitlines()):
            try:
                return RoundOutcome(**json.loads(line))
            except (ValueError, TypeError):
                continue
        return RoundOutcome("failed", f"training process exited with {process.returncode}")

    def stop(self, timeout_s: float = 10.0) -> None:
        process = self._process
        if process is None or process.poll() is not None:
            return
        process.terminate()  # a round cut short commits nothing: the transaction is all or none
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def child_main() -> None:
    from ftlct.agent.logs import configure_logging
    from ftlct.agent.training.local_round import run_local_round

    settings, data_root = pickle.loads(sys.stdin.buffer.read())
    configure_logging(settings.logging)
    with contextlib.suppress(OSError):  # lower priority is a courtesy, not a requirement
        os.nice(NICENESS)
    try:
        outcome = run_local_round(settings, Path(data_root))
    except Exception as exc:  # reported to serve, which records it and carries on
        logging.getLogger(__name__).exception("local round failed")
        outcome = RoundOutcome("failed", f"{type(exc).__name__}: {exc}")
    sys.stdout.write(json.dumps(outcome.to_json()) + "\n")
    sys.stdout.flush()
