"""Eager embedding: slices embedded while their series still arrives, on threads that yield.

While slices arrive, the receive path (pynetdicom's threads, the store's
fsyncs) and embedding want the same cores. Receiving comes first: a late
acknowledgement holds the sender up, while an embedding is not needed before
the series is complete. So eager batches run on their own thread and decode
pool, lowered by ``inference.eager_niceness`` (per-thread niceness,
``thread_priority``): they get the CPU the receive path leaves. With
``inference.threads = 1`` onnxruntime computes on the calling thread, so the
backbone runs lowered too; with more, onnxruntime's own pool threads are
shared with the jobs and not lowered.

Niceness orders the threads for the cores, not for Python's GIL: a lowered
thread parsing a dataset still holds up the receive threads at each of their
many hand-offs (socket reads, queue hand-offs, fsync returns), and every CPU
second embedding takes inside a transfer is one the transfer waits for on a
busy box. So while an association is receiving (``receiving()``: a C-STORE in
flight or just done) arrivals wait, but only while the work waiting stays
small: until it adds up to ``inference.eager_defer_s`` seconds of embedding
(estimated from the last batches), or its oldest slice has waited twice that.
A series short to embed is then embedded after its last slice, during its
quiet period; a long one, or one arriving beside a steady stream, is embedded
while it arrives, never more than that much work behind, so it is still done
before its quiet period ends. While an association receives, a call embeds one
batch; once none does, up to ``IDLE_BATCHES_PER_CALL``, so the embedder decodes the
next batch while onnxruntime runs this one (one batch a call left a core idle: a
238-slice JPEG Lossless series took ~6.5 s, longer than its 5 s quiet period).

A series job never runs lowered: it has the inference worker's thread. Around
it (``job_running``) no eager batch starts and the onnxruntime call in flight
is cancelled (``RunOptions.terminate``), so a job neither waits for a lowered
thread nor holds onnxruntime's activation buffers at the same time as one.
Whatever eager embedding did not reach, the job embeds itself.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator

import onnxruntime as ort

from ftlct.agent.background import BackgroundLoop
from ftlct.agent.inference.embedder import Interrupted, SliceEmbedder
from ftlct.agent.inference.embeddings import EmbeddingStore
from ftlct.agent.inference.engine import InferenceEngine
from ftlct.agent.metrics import AgentMetrics
from ftlct.agent.settings import InferenceSettings
from ftlct.agent.store.instance_store import InstanceStore, StoredInstance
from ftlct.agent.thread_priority import ThreadNiceness

GATHER_S = 0.2  # a batch not full yet waits this long for more arrivals
# With nothing receiving, one call takes up to this many batches, so the embedder decodes the
# next batch while onnxruntime runs this one (one batch a call leaves a core idle).
IDLE_BATCHES_PER_CALL = 4
FIRST_SECONDS_PER_SLICE = 0.02  # the work estimate before a batch was measured
ESTIMATE_WEIGHT = 0.3  # of the latest batch in the running estimate


class EagerEmbedder(BackgroundLoop):
    name = "eager-embedding"
    idle_wait_s = 0.05  # a deferred or gathering batch is re-checked this often

    def __init__(
        self,
        store: InstanceStore,
        embeddings: EmbeddingStore,
        engine: InferenceEngine,
        settings: InferenceSettings,
        metrics: AgentMetrics,
        receiving: Callable[[], bool] = lambda: False,
        clock: Callable[[], float] = time.monotonic,
    ):
        """``receiving()``: whether an association is receiving instances right now."""
        super().__init__()
        self.store = store
        self.embeddings = embeddings
        self.engine = engine
        self.settings = settings
        self.receiving = receiving
        self.clock = clock
        self.niceness = ThreadNiceness(settings.eager_niceness)
        self.embedder = SliceEmbedder(
            store,
            embeddings,
            settings.batch_size,
            settings.decode_threads,
            metrics,
            thread_setup=self.niceness.apply,
        )
        self._arrived: deque[tuple[float, str]] = deque()  # (when, SOP Instance UID)
        self._lock = threading.Lock()
        self._jobs = 0  # series jobs running now
        self._in_flight: ort.RunOptions | None = None
        self.seconds_per_slice = FIRST_SECONDS_PER_SLICE

    def instance_arrived(self, instance: StoredInstance) -> None:
        """Event subscriber: queue a freshly stored instance. While an association receives,
        the loop is not woken for each one: its batch waits then, and the loop looks again
        every ``idle_wait_s`` (a wake-up per instance was a turn at the GIL taken from the
        receive path)."""
        self._arrived.append((self.clock(), instance.sop_instance_uid))
        if not self.receiving():
            self.wake()

    def thread_started(self) -> None:
        self.niceness.apply()

    def stop(self, timeout_s: float = 60.0) -> None:
        self._cancel_in_flight()
        super().stop(timeout_s)
        self.embedder.close()

    @contextlib.contextmanager
    def job_running(self) -> Iterator[None]:
        """Around a series job: no eager batch starts, and the one in flight is cancelled."""
        with self._lock:
            self._jobs += 1
        self._cancel_in_flight()
        try:
            yield
        finally:
            with self._lock:
                self._jobs -= 1
            self.wake()

    def _cancel_in_flight(self) -> None:
        with self._lock:
            if self._in_flight is not None:
                self._in_flight.terminate = True

    # ------------------------------------------------------------------ the loop
    def run_once(self) -> bool:
        """Embed one batch of arrivals not embedded yet; False when there was nothing to do."""
        if self._jobs:
            return False  # woken again when the job ends
        uids = self._take()
        if not uids:
            return False
        snapshot = self.engine.current
        rows = [row for uid in dict.fromkeys(uids) if (row := self.store.instance(uid))]
        todo = self._not_embedded(rows, snapshot.backbone_sha256)
        with self._lock:
            if self._jobs or self.stopping:
                return True  # dropped: a series job embeds what it lacks
            options = self._in_flight = ort.RunOptions()
        started = time.monotonic()
        try:
            self.embedder.embed(snapshot, todo, lambda: self.stopping or bool(self._jobs), options)
            if todo:
                latest = (time.monotonic() - started) / len(todo)
                self.seconds_per_slice += ESTIMATE_WEIGHT * (latest - self.seconds_per_slice)
        except Interrupted:
            pass
        except Exception:
            if not options.terminate:  # cancelled by a job or a stop: not a failure
                raise
        finally:
            with self._lock:
                self._in_flight = None
        return True

    def _take(self) -> list[str]:
        """The next batch of arrivals, once due: none while it may wait, or fills up."""
        if not self._arrived:
            return []
        waited = self.clock() - self._arrived[0][0]
        defer_s = self.settings.eager_defer_s
        backlog_s = len(self._arrived) * self.seconds_per_slice
        receiving = self.receiving()
        if waited < 2 * defer_s and backlog_s < defer_s and receiving:
            return []
        if len(self._arrived) < self.settings.batch_size and waited < GATHER_S:
            return []  # more are likely on their way: batches are cheaper full
        # While an association receives, a batch at a time stays out of its way; once none
        # does, several, decoded ahead of the onnxruntime calls (SliceEmbedder.embed).
        batches = 1 if receiving else IDLE_BATCHES_PER_CALL
        count = min(batches * self.settings.batch_size, len(self._arrived))
        return [self._arrived.popleft()[1] for _ in range(count)]

    def _not_embedded(self, rows: list[dict], backbone_sha256: str) -> list[dict]:
        skipped = self.embeddings.unembeddable(rows)
        return [
            row
            for row in rows
            if row["sop_instance_uid"] not in skipped
            and not self.embeddings.has_embedding(row, backbone_sha256)
        ]
