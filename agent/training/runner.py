"""Run a local round in a child process, so ``serve`` never imports torch and DICOM keeps its core.

The child is ``python -c 'child_main()'`` at lower CPU priority; it gets the
round's ``TrainingPlan``, the ``[training]`` and ``[logging]`` settings and the
data dir on stdin (pickled: same user, same code), trains
(``train_from_data_dir``) and prints the result as one JSON line, the delta
as base64 safetensors. A thread reads that output while the child runs: a
closed-form round's statistics (~4 MiB in base64 for a 1280-d embedding) would
otherwise fill the pipe and block the child forever. It shares nothing with serve but the SQLite files
(WAL: serve keeps receiving while it reads embeddings) and writes nothing:
serve releases what it returns. The child leads its own process group and has
``training.max_duration_s`` of wall-clock time: past it, the whole group is
killed (SIGKILL: a child stuck in native code ignores gentler signals) and
the round comes back ``failed`` with a reason starting ``TIMED_OUT``.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from ftlct.agent.settings import LoggingSettings, TrainingSettings
from ftlct.agent.training.local_round import LocalRoundResult, NoResult, TrainingPlan
from ftlct.protocol.messages import body_to_tensors, tensors_to_body

log = logging.getLogger(__name__)

CHILD = "from ftlct.agent.training.runner import child_main; child_main()"
NICENESS = 10
RESULT_PREFIX = "ftlct-training-result "  # marks the one stdout line that carries the result
TIMED_OUT = "training ran out of time"


class TrainingRunner:
    def __init__(
        self,
        settings: TrainingSettings,
        logging_settings: LoggingSettings,
        data_root: Path,
        clock=time.monotonic,
    ):
        self.settings = settings
        self.logging = logging_settings
        self.data_root = Path(data_root)
        self.clock = clock
        self._process: subprocess.Popen | None = None
        self._started_at = 0.0
        self._reader: threading.Thread | None = None
        self._output = b""

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self, plan: TrainingPlan) -> None:
        if self.running:
            return
        self._process = subprocess.Popen(
            [sys.executable, "-c", CHILD],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=None,  # the child's log lines join serve's
            start_new_session=True,  # its own process group: killed whole on expiry
        )
        self._started_at = self.clock()
        assert self._process.stdin is not None
        self._output = b""
        self._reader = threading.Thread(
            target=self._read_output, args=(self._process,), name="training-output", daemon=True
        )
        self._reader.start()
        job = (plan, self.settings, self.logging, str(self.data_root))
        self._process.stdin.write(pickle.dumps(job))
        self._process.stdin.close()

    def _read_output(self, process: subprocess.Popen) -> None:
        self._output = process.stdout.read() if process.stdout else b""

    def poll(self) -> LocalRoundResult | NoResult | None:
        """The result once the child has exited (then the runner is free again), else None."""
        process = self._process
        if process is None:
            return None
        if process.poll() is None:
            limit = self.settings.max_duration_s
            if self.clock() - self._started_at <= limit:
                return None
            self._kill(process)
            self._process = None
            if self._reader is not None:  # the group is dead: its pipe ends, the reader with it
                self._reader.join(5.0)
            if process.stdout:
                process.stdout.close()
            return NoResult(
                "failed", f"{TIMED_OUT}: killed after training.max_duration_s = {limit:g} s"
            )
        self._process = None
        if self._reader is not None:
            self._reader.join()
        output = self._output.decode(errors="replace")
        if process.stdout:
            process.stdout.close()
        for line in reversed(output.splitlines()):
            if line.startswith(RESULT_PREFIX):
                try:
                    return decode_result(line[len(RESULT_PREFIX) :])
                except (ValueError, TypeError, KeyError):
                    break
        return NoResult("failed", f"training process exited with {process.returncode}")

    def stop(self, timeout_s: float = 10.0) -> None:
        process = self._process
        if process is None or process.poll() is not None:
            return
        _signal_group(process, signal.SIGTERM)  # a round cut short has released nothing
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self._kill(process)
        self._process = None

    @staticmethod
    def _kill(process: subprocess.Popen) -> None:
        _signal_group(process, signal.SIGKILL)
        process.wait()


def _signal_group(process: subprocess.Popen, sig: int) -> None:
    """``sig`` to the child's process group (whatever it started dies with it)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, sig)


def encode_result(result: LocalRoundResult | NoResult) -> str:
    if isinstance(result, NoResult):
        return json.dumps({"outcome": result.outcome, "reason": result.reason})
    body = base64.b64encode(tensors_to_body(result.delta)).decode("ascii")
    doc = {"outcome": "trained", "n_samples": result.n_samples, "metrics": result.metrics}
    return json.dumps({**doc, "delta": body})


def decode_result(text: str) -> LocalRoundResult | NoResult:
    doc = json.loads(text)
    if doc["outcome"] != "trained":
        return NoResult(str(doc["outcome"]), str(doc["reason"]))
    delta = body_to_tensors(base64.b64decode(doc["delta"]))
    return LocalRoundResult(delta, int(doc["n_samples"]), dict(doc["metrics"]))


def child_main() -> None:
    from ftlct.agent.logs import configure_logging
    from ftlct.agent.training.local_round import train_from_data_dir

    plan, settings, logging_settings, data_root = pickle.loads(sys.stdin.buffer.read())
    configure_logging(logging_settings)
    with contextlib.suppress(OSError):  # lower priority is a courtesy, not a requirement
        os.nice(NICENESS)
    try:
        result = train_from_data_dir(plan, settings, Path(data_root))
    except Exception as exc:  # reported to serve, which records it and carries on
        logging.getLogger(__name__).exception("local round failed")
        result = NoResult("failed", f"{type(exc).__name__}: {exc}")
    sys.stdout.write(RESULT_PREFIX + encode_result(result) + "\n")
    sys.stdout.flush()
