"""The agent's pipeline stages wired as ``AgentService`` wires them, driven by hand (fake clock)."""

from __future__ import annotations

from ftlct.agent.events import RESULT_READY, EventBus
from ftlct.agent.inference.eager import EagerEmbedder
from ftlct.agent.inference.embeddings import EmbeddingStore
from ftlct.agent.inference.engine import InferenceEngine
from ftlct.agent.inference.worker import InferenceWorker
from ftlct.agent.metrics import AgentMetrics
from ftlct.agent.series.assembler import SeriesAssembler
from ftlct.agent.series.jobs import JobQueue
from ftlct.agent.series.series_index import SeriesIndex
from ftlct.agent.settings import InferenceSettings, SeriesSettings
from ftlct.agent.store.database import Database
from ftlct.agent.store.disk import DiskGuard
from ftlct.agent.store.instance_store import InstanceStore
from ftlct.agent.store.layout import DataDir
from tests.agent.dicom_files import part10_bytes


class Agent:
    """Store, assembler, jobs, embeddings, engine, eager embedder and worker on one data dir."""

    def __init__(self, root, model_path, **inference):
        self.now = 1_000_000.0
        clock = lambda: self.now  # noqa: E731
        self.data_dir = DataDir(root).create()
        self.db = Database(self.data_dir.index)
        self.series = SeriesIndex(self.db)
        self.store = InstanceStore(
            self.data_dir, self.db, DiskGuard(lambda: 10**15, 0), clock, series=self.series
        )
        self.jobs = JobQueue(self.db, clock)
        self.events = EventBus()
        self.metrics = AgentMetrics()
        self.assembler = SeriesAssembler(
            self.db,
            self.series,
            self.jobs,
            SeriesSettings(quiet_period_s=5),
            self.events,
            self.metrics,
            clock,
        )
        self.embeddings = EmbeddingStore(self.data_dir)
        self.engine = InferenceEngine.load(model_path, threads=1)
        self.db.set_meta("model_version", self.engine.current.version)  # as the service does
        settings = InferenceSettings(model_dir=model_path, batch_size=4, **inference)
        self.eager = EagerEmbedder(
            self.store, self.embeddings, self.engine, settings, self.metrics, clock=clock
        )
        self.worker = InferenceWorker(
            self.db,
            self.series,
            self.store,
            self.jobs,
            self.embeddings,
            self.engine,
            settings,
            self.events,
            self.metrics,
            clock,
            around_job=self.eager.job_running,
        )
        self.results = []
        self.events.subscribe(RESULT_READY, self.results.append)

    def put(self, ds):
        result = self.store.put(part10_bytes(ds))
        assert result.ok, result.reason
        return result

    def complete_and_run(self):
        self.now += 6
        self.assembler.tick()
        return self.worker.run_once()

    def slices_embedded(self) -> float:
        return self.metrics.slices_embedded._value.get()

    def close(self):
        self.eager.embedder.close()
        self.worker.embedder.close()
        self.embeddings.close()
        self.db.close()
