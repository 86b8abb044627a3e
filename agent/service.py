"""The serve process: one ``AgentService`` owns every stage and starts/stops them in order.

    C-STORE -> StorageScp -> InstanceStore -> SeriesIndex -> SeriesAssembler
               (in-process, or in ``dicom.receive_processes`` workers: ReceiveWorkers)
            -> JobQueue -> InferenceWorker (engine, embeddings) -> ResultStore
            -> DeliveryQueue (SR to the PACS)
    InstanceStore -> instance_stored -> EagerEmbedder (lowered threads, out of a job's way)

A model swap (``engine.swap``, e.g. by the federation's installer) is recorded
in ``meta`` and announced on the event bus as ``model_swapped``.

Other parts plug in as *components*: objects with ``start()`` and ``stop()``
that were handed what they use when built (``agent/components.py`` builds the
federation sync and the scanner's twin from this service's parts: the engine,
the index, the event bus, the data dir). A component never reaches into the
service.

Components start after the pipeline and stop before it, in reverse order.
"""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import threading
from typing import Protocol

from ftlct.agent.destination import parse_destination
from ftlct.agent.dicom.receive_workers import ReceiveWorkers
from ftlct.agent.dicom.scp import StorageScp
from ftlct.agent.events import INSTANCE_STORED, MODEL_SWAPPED, EventBus
from ftlct.agent.inference.eager import EagerEmbedder
from ftlct.agent.inference.embeddings import EmbeddingStore
from ftlct.agent.inference.engine import InferenceEngine, ModelSnapshot
from ftlct.agent.inference.worker import InferenceWorker
from ftlct.agent.logs import log_event
from ftlct.agent.metrics import AgentMetrics
from ftlct.agent.reporting.delivery import DeliveryQueue
from ftlct.agent.series.assembler import SeriesAssembler
from ftlct.agent.series.jobs import JobQueue
from ftlct.agent.series.series_index import SeriesIndex
from ftlct.agent.settings import AgentSettings
from ftlct.agent.status import collect_status
from ftlct.agent.store.database import Database
from ftlct.agent.store.disk import DiskGuard, FreeBytes, free_bytes_of
from ftlct.agent.store.instance_store import InstanceStore
from ftlct.agent.store.layout import DataDir
from ftlct.agent.sync.model_install import choose_model_dir

log = logging.getLogger(__name__)


class Component(Protocol):
    def start(self) -> None: ...

    def stop(self) -> None: ...


class AgentService:
    def __init__(self, settings: AgentSettings, free_bytes: FreeBytes | None = None):
        self.settings = settings
        self.data_dir = DataDir(settings.storage.data_dir).create()
        self.events = EventBus()
        self.metrics = AgentMetrics()
        # The model first: a bad --model must fail before anything listens.
        # A global head installed by the federation sync wins over --model if it fits it.
        model_dir = choose_model_dir(settings.inference.model_dir, self.data_dir.root)
        self.engine = InferenceEngine.load(model_dir, settings.inference.threads)
        self.db = Database(self.data_dir.index)
        self.guard = DiskGuard(
            free_bytes or free_bytes_of(self.data_dir.root), settings.storage.min_free_bytes
        )
        self.series = SeriesIndex(self.db)
        self.store = InstanceStore.configured(
            self.data_dir, self.db, self.guard, settings.storage, series=self.series
        )
        self.embeddings = EmbeddingStore(self.data_dir)
        self.jobs = JobQueue(self.db)
        self.assembler = SeriesAssembler(
            self.db, self.series, self.jobs, settings.series, self.events, self.metrics
        )
        processes = settings.dicom.receive_processes
        if processes > 1 and free_bytes is not None:
            raise ValueError("a free-space function cannot reach receive worker processes")
        self.scp: StorageScp | ReceiveWorkers = (
            ReceiveWorkers(settings, self.events, self.metrics, processes)
            if processes > 1
            else StorageScp(
                settings.dicom, settings.tls, self.store, self.guard, self.events, self.metrics
            )
        )
        self.eager: EagerEmbedder | None = None
        if settings.inference.eager:
            self.eager = EagerEmbedder(
                self.store,
                self.embeddings,
                self.engine,
                settings.inference,
                self.metrics,
                receiving=self.scp.receiving,
            )
        self.worker = InferenceWorker(
            self.db,
            self.series,
            self.store,
            self.jobs,
            self.embeddings,
            self.engine,
            settings.inference,
            self.events,
            self.metrics,
            around_job=self.eager.job_running if self.eager else contextlib.nullcontext,
        )
        self.delivery: DeliveryQueue | None = None
        if settings.results.destination:
            self.delivery = DeliveryQueue(
                self.db,
                self.store,
                parse_destination(settings.results.destination),
                settings.results,
                settings.dicom.ae_title,
                self.events,
                self.metrics,
            )
            self.worker.result_hooks.append(self.delivery.result_hook)
        self.components: list[Component] = []
        self._stopped = threading.Event()
        self._wire()

    def _wire(self) -> None:
        if self.eager is not None:
            self.events.subscribe(INSTANCE_STORED, self.eager.instance_arrived)
        self.assembler.on_completed = self.worker.wake
        self.engine.on_swap(self._model_swapped)
        self.metrics.track_queue("open_series", self.assembler.open_count)
        self.metrics.track_queue("inference", self.jobs.depth)
        if self.delivery is not None:
            self.metrics.track_queue("delivery", self.delivery.pending)

    def add_component(self, component: Component) -> None:
        """Plug in a component; call before ``start``."""
        self.components.append(component)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        recovered = self.store.recover()
        requeued = self.jobs.reset_interrupted()
        self._record_model(self.engine.current)
        self.assembler.tick()  # series whose quiet period passed while we were down
        self.worker.start()
        if self.eager is not None:
            self.eager.start()
        self.assembler.start()
        if self.delivery is not None:
            self.delivery.start()
        if self.settings.metrics.port:
            self.metrics.serve(self.settings.metrics.host, self.settings.metrics.port)
        self.scp.start()
        for component in self.components:
            component.start()
        log_event(
            log,
            "agent_started",
            data_dir=str(self.data_dir.root),
            model_version=self.engine.current.version,
            requeued_jobs=requeued,
            **recovered,
        )

    def stop(self) -> None:
        """Stop accepting, finish in-flight stores, put running work back in its queue."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        log_event(log, "agent_stopping")
        for component in reversed(self.components):
            try:
                component.stop()
            except Exception:
                log.exception("component stop failed")
        self.scp.stop()
        self.assembler.stop()
        if self.eager is not None:
            self.eager.stop()
        self.worker.stop()
        if self.delivery is not None:
            self.delivery.stop()
        self.metrics.stop()
        self.embeddings.close()
        self.db.close()
        log_event(log, "agent_stopped")

    def run_until_signal(self) -> None:
        """``start``, wait for SIGTERM or SIGINT, then ``stop`` gracefully."""
        stop = threading.Event()

        def request_stop(signum, _frame) -> None:
            log_event(log, "signal", name=signal.Signals(signum).name)
            stop.set()

        previous = {s: signal.signal(s, request_stop) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            self.start()
            while not stop.wait(1.0):
                pass
        finally:
            self.stop()
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    # ------------------------------------------------------------------ views and control
    def status(self) -> dict:
        return collect_status(self.db)

    def _model_swapped(self, old: ModelSnapshot, new: ModelSnapshot) -> None:
        self._record_model(new)
        log_event(log, "model_swapped", old_version=old.version, new_version=new.version)
        self.events.emit(MODEL_SWAPPED, {"old_version": old.version, "new_version": new.version})

    def _record_model(self, snapshot: ModelSnapshot) -> None:
        self.db.set_meta("model_version", snapshot.version)
        self.db.set_meta("backbone_sha256", snapshot.backbone_sha256)
        self.db.set_meta("model_labels", json.dumps(snapshot.labels))  # `label` checks against it
        self.metrics.set_model_version(snapshot.version)
