"""The inference worker: one thread that runs queued series jobs.

A job takes the engine's current snapshot once, embeds whatever instances of
the series have no embedding yet for that backbone, runs the head over all
slices, aggregates, and writes the result, its job's completion and the
series' new state in one transaction (plus any result hooks, e.g. the SR
delivery queue, so a crash can never keep a result and lose its delivery).

Instances that just arrived are embedded ahead of time by ``eager.py`` on
lowered threads, so when the quiet period ends most of a series is already
embedded and the job is little more than the head and the average;
``around_job`` (the eager embedder's ``job_running``) keeps those threads out
of a job's way.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import time
from collections.abc import Callable
from contextlib import AbstractContextManager

import numpy as np

from ftlct.agent.background import BackgroundLoop
from ftlct.agent.events import RESULT_READY, EventBus
from ftlct.agent.inference.aggregation import aggregate
from ftlct.agent.inference.embedder import Interrupted, SliceEmbedder
from ftlct.agent.inference.embeddings import EmbeddingStore
from ftlct.agent.inference.engine import InferenceEngine
from ftlct.agent.inference.results import ResultStore, SeriesResult
from ftlct.agent.logs import log_event
from ftlct.agent.metrics import AgentMetrics
from ftlct.agent.series.jobs import Job, JobQueue
from ftlct.agent.series.series_index import SeriesIndex
from ftlct.agent.settings import InferenceSettings
from ftlct.agent.store.database import Database
from ftlct.agent.store.instance_store import InstanceStore
from ftlct.protocol.errors import is_exit

log = logging.getLogger(__name__)

ResultHook = Callable[[sqlite3.Connection, SeriesResult], None]


class InferenceWorker(BackgroundLoop):
    name = "inference"

    def __init__(
        self,
        db: Database,
        series: SeriesIndex,
        store: InstanceStore,
        jobs: JobQueue,
        embeddings: EmbeddingStore,
        engine: InferenceEngine,
        settings: InferenceSettings,
        events: EventBus,
        metrics: AgentMetrics,
        clock=time.time,
        around_job: Callable[[], AbstractContextManager] = contextlib.nullcontext,
    ):
        super().__init__()
        self.db = db
        self.series = series
        self.store = store
        self.jobs = jobs
        self.embeddings = embeddings
        self.engine = engine
        self.settings = settings
        self.events = events
        self.metrics = metrics
        self.clock = clock
        self.results = ResultStore(db)
        self.embedder = SliceEmbedder(
            store, embeddings, settings.batch_size, settings.decode_threads, metrics
        )
        self.result_hooks: list[ResultHook] = []
        self.around_job = around_job

    def stop(self, timeout_s: float = 60.0) -> None:
        super().stop(timeout_s)
        self.embedder.close()

    def run_once(self) -> bool:
        """Run one job if one is due; False when there was nothing to do."""
        job = self.jobs.claim()
        if job is None:
            return False
        with self.around_job():
            self._run_job(job)
        return True

    # ------------------------------------------------------------------ jobs
    def _run_job(self, job: Job) -> None:
        started = time.monotonic()
        try:
            result = self._infer_series(job, started)
        except Interrupted:
            self.jobs.release(job)
            log_event(log, "job_interrupted", series_uid=job.series_uid)
            return
        except BaseException as exc:  # a codec's panic too (is_exit)
            if is_exit(exc):
                raise
            self._job_failed(job, f"{type(exc).__name__}: {exc}")
            return
        if result is None:
            return
        self.metrics.series_inferred.inc()
        self.metrics.inference_seconds.observe(result.inference_s)
        self.metrics.result_latency_seconds.observe(result.latency_s)
        log_event(
            log,
            "series_inferred",
            series_uid=result.series_uid,
            label=result.label,
            probability=round(result.probabilities[result.label], 4),
            n_slices=result.n_slices,
            model_version=result.model_version,
            inference_s=round(result.inference_s, 3),
            latency_s=round(result.latency_s, 3),
        )
        self.events.emit(RESULT_READY, result)

    def _infer_series(self, job: Job, started: float) -> SeriesResult | None:
        snapshot = self.engine.current  # one model for the whole job
        series = self.series.get(job.series_uid)
        if series is None:
            raise LookupError(f"series {job.series_uid} is not indexed")
        instances = self.store.instances_of(job.series_uid)
        known = self.embeddings.for_series(job.series_uid, snapshot.backbone_sha256)
        skipped = self.embeddings.unembeddable(instances)
        missing = [
            i
            for i in instances
            if i["sop_instance_uid"] not in known and i["sop_instance_uid"] not in skipped
        ]
        fresh = self.embedder.embed(snapshot, missing, lambda: self.stopping)
        known.update(fresh.vectors)
        skipped.update(fresh.errors)

        slice_owner: list[str] = []
        blocks = []
        for instance in instances:
            vectors = known.get(instance["sop_instance_uid"])
            if vectors is not None:
                blocks.append(vectors)
                slice_owner += [instance["sop_instance_uid"]] * len(vectors)
        if not blocks:
            reason = f"no usable image in {len(instances)} instance(s)"
            if skipped:
                reason += f": {next(iter(skipped.values()))}"
            self._finish_without_result(job, "skipped", reason)
            return None

        probabilities = snapshot.probabilities(np.concatenate(blocks))
        score = aggregate(
            probabilities,
            snapshot.labels,
            self.settings.aggregation,
            self.settings.top_k,
            self.settings.negative_label,
        )
        now = self.clock()
        result = SeriesResult(
            series_uid=job.series_uid,
            study_uid=series["study_uid"],
            generation=job.generation,
            n_instances=len(instances),
            n_slices=len(slice_owner),
            n_skipped=len(skipped),
            label=score.label,
            probabilities=score.probabilities,
            key_instances=list(dict.fromkeys(slice_owner[i] for i in score.key_slices)),
            aggregation=score.rule,
            model_version=snapshot.version,
            backbone_sha256=snapshot.backbone_sha256,
            latency_s=max(0.0, now - series["last_received_at"]),
            inference_s=time.monotonic() - started,
            created_at=now,
        )
        with self.db.transaction() as conn:
            result = self.results.insert(conn, result)
            self.jobs.finish(conn, job)
            self._set_series_state(conn, job, "inferred", None)
            for hook in self.result_hooks:
                hook(conn, result)
        return result

    def _set_series_state(self, conn, job: Job, state: str, reason: str | None) -> None:
        self.series.finish(conn, job.series_uid, job.generation, state, reason)

    def _finish_without_result(self, job: Job, state: str, reason: str) -> None:
        with self.db.transaction() as conn:
            self.jobs.finish(conn, job)
            self._set_series_state(conn, job, state, reason)
        log_event(log, "series_" + state, logging.WARNING, series_uid=job.series_uid, reason=reason)

    def _job_failed(self, job: Job, error: str) -> None:
        if job.attempts < self.settings.max_attempts:
            delay = 5.0 * job.attempts
            self.jobs.retry_later(job, error, delay)
            log_event(
                log,
                "job_retry",
                logging.WARNING,
                series_uid=job.series_uid,
                attempt=job.attempts,
                retry_in_s=delay,
                error=error,
            )
            return
        with self.db.transaction() as conn:
            self.jobs.fail(conn, job, error)
            self._set_series_state(conn, job, "failed", error)
        log_event(log, "series_failed", logging.ERROR, series_uid=job.series_uid, error=error)
