"""Prometheus metrics of one agent (own registry, no globals), served on ``/metrics``."""

from __future__ import annotations

import logging
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

log = logging.getLogger(__name__)

# Seconds: a single slice takes ~0.05 s, a 500-slice series tens of seconds on 2 cores.
LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128, 256)


class AgentMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.instances_received = Counter(
            "ftlct_agent_instances_received", "C-STORE requests by outcome", ["outcome"], registry=r
        )
        self.bytes_received = Counter(
            "ftlct_agent_bytes_received", "Bytes of instances stored", registry=r
        )
        self.associations = Counter(
            "ftlct_agent_associations", "Association requests by result", ["result"], registry=r
        )
        self.series_completed = Counter(
            "ftlct_agent_series_completed", "Series that reached their quiet period", registry=r
        )
        self.series_inferred = Counter(
            "ftlct_agent_series_inferred", "Series results written", registry=r
        )
        self.slices_embedded = Counter(
            "ftlct_agent_slices_embedded", "Slices run through the backbone", registry=r
        )
        self.inference_seconds = Histogram(
            "ftlct_agent_inference_seconds",
            "Compute time of one series inference job",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.result_latency_seconds = Histogram(
            "ftlct_agent_result_latency_seconds",
            "Last instance of a series received -> its result stored (includes the quiet period)",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.deliveries = Counter(
            "ftlct_agent_sr_deliveries", "SR delivery attempts by outcome", ["outcome"], registry=r
        )
        self.queue_depth = Gauge(
            "ftlct_agent_queue_depth", "Items waiting in each durable queue", ["queue"], registry=r
        )
        self.model_info = Gauge(
            "ftlct_agent_model_info", "The model version in use (value 1)", ["version"], registry=r
        )
        self._server = None

    def track_queue(self, name: str, depth: Callable[[], float]) -> None:
        """Report ``depth()`` as the ``queue`` gauge at every scrape."""
        self.queue_depth.labels(name).set_function(depth)

    def set_model_version(self, version: str) -> None:
        self.model_info.clear()
        self.model_info.labels(version).set(1)

    def serve(self, host: str, port: int) -> None:
        """Start ``/metrics`` on ``host:port`` (a daemon thread)."""
        try:
            self._server, _thread = start_http_server(port, addr=host, registry=self.registry)
        except OSError as exc:
            raise OSError(exc.errno, f"metrics on {host}:{port}: {exc.strerror or exc}") from exc
        log.info("metrics", extra={"event": "metrics_listening", "fields": {"port": port}})

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
