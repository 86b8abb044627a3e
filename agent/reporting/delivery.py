"""Deliver series results as DICOM SR to the configured destination, retrying until it works.

A delivery row (``reporting.deliveries``) is written in the same transaction as its result (a result
hook of the inference worker), so no result can lose its SR to a crash. This
thread builds the SR file under ``reports/`` on the first attempt and C-STOREs
it; failures back off exponentially and end as ``failed`` after
``max_attempts``. Nothing here may stop the agent: every error is recorded on
the delivery row and in the log.
"""

from __future__ import annotations

import io
import logging
import sqlite3
import time

import pydicom

from ftlct.agent.background import BackgroundLoop
from ftlct.agent.destination import Destination
from ftlct.agent.dicom.sender import SendError, send_file
from ftlct.agent.dicom.tls import client_ssl_context
from ftlct.agent.events import RESULT_DELIVERED, EventBus
from ftlct.agent.inference.results import ResultStore, SeriesResult
from ftlct.agent.logs import log_event
from ftlct.agent.metrics import AgentMetrics
from ftlct.agent.reporting.deliveries import Deliveries
from ftlct.agent.settings import ResultsSettings
from ftlct.agent.store.database import Database
from ftlct.agent.store.instance_store import InstanceStore
from ftlct.agent.store.layout import FILE_MODE, uid_key
from ftlct.export.files import atomic_write_bytes

log = logging.getLogger(__name__)


class DeliveryQueue(BackgroundLoop):
    name = "sr-delivery"

    def __init__(
        self,
        db: Database,
        store: InstanceStore,
        destination: Destination,
        settings: ResultsSettings,
        calling_ae: str,
        events: EventBus,
        metrics: AgentMetrics,
        clock=time.time,
    ):
        super().__init__()
        self.db = db
        self.store = store
        self.deliveries = Deliveries(db)
        self.results = ResultStore(db)
        self.destination = destination
        self.settings = settings
        self.calling_ae = calling_ae
        self.events = events
        self.metrics = metrics
        self.clock = clock
        # Built once: a missing or bad certificate file fails at start, not at each send.
        self.ssl_context = (
            client_ssl_context(settings.tls_ca, settings.tls_cert, settings.tls_key)
            if settings.tls_ca is not None
            else None
        )

    # ------------------------------------------------------------------ feeding
    def result_hook(self, conn: sqlite3.Connection, result: SeriesResult) -> None:
        """Queue the SR of ``result`` (runs inside the result's transaction)."""
        self.deliveries.add(conn, result.id, result.series_uid, str(self.destination), self.clock())
        self.wake()

    def pending(self) -> int:
        return self.deliveries.pending()

    def run_once(self) -> bool:
        """Attempt the oldest due delivery; False if none is due."""
        delivery = self.deliveries.next_due(self.clock())
        if delivery is None:
            return False
        self._attempt(delivery)
        return True

    # ------------------------------------------------------------------ one attempt
    def _attempt(self, delivery: dict) -> None:
        result = self.results.get(delivery["result_id"])
        if result is None or self._superseded(result):
            self._update(delivery, state="superseded")
            return
        if delivery["path"] is None:
            try:
                delivery["path"], delivery["sop_instance_uid"] = self._write_sr(result)
            except Exception as exc:  # a source header highdicom rejects: retrying will not help
                self._update(delivery, state="failed", last_error=f"cannot build SR: {exc}")
                self.metrics.deliveries.labels("failed").inc()
                log_event(
                    log,
                    "sr_failed",
                    logging.ERROR,
                    series_uid=result.series_uid,
                    error=f"cannot build SR: {type(exc).__name__}: {exc}",
                )
                return
            self._update(
                delivery, path=delivery["path"], sop_instance_uid=delivery["sop_instance_uid"]
            )
        attempts = delivery["attempts"] + 1
        try:
            send_file(
                self.store.data_dir.resolve(delivery["path"]),
                self.destination,
                self.calling_ae,
                ssl_context=self.ssl_context,
            )
        except (SendError, OSError) as exc:
            self._failed_attempt(delivery, attempts, str(exc))
            return
        self._update(
            delivery, state="sent", attempts=attempts, sent_at=self.clock(), last_error=None
        )
        self.metrics.deliveries.labels("sent").inc()
        log_event(
            log,
            "sr_delivered",
            series_uid=result.series_uid,
            destination=str(self.destination),
            attempts=attempts,
        )
        self.events.emit(
            RESULT_DELIVERED,
            {
                "series_uid": result.series_uid,
                "destination": str(self.destination),
                "sop_instance_uid": delivery["sop_instance_uid"],
            },
        )

    def _failed_attempt(self, delivery: dict, attempts: int, error: str) -> None:
        self.metrics.deliveries.labels("retry").inc()
        if attempts >= self.settings.max_attempts:
            self._update(delivery, state="failed", attempts=attempts, last_error=error)
            self.metrics.deliveries.labels("failed").inc()
            log_event(
                log,
                "sr_failed",
                logging.ERROR,
                series_uid=delivery["series_uid"],
                attempts=attempts,
                error=error,
            )
            return
        delay = min(self.settings.retry_initial_s * 2 ** (attempts - 1), self.settings.retry_max_s)
        self._update(
            delivery, attempts=attempts, last_error=error, next_attempt_at=self.clock() + delay
        )
        log_event(
            log,
            "sr_retry",
            logging.WARNING,
            series_uid=delivery["series_uid"],
            attempts=attempts,
            retry_in_s=round(delay, 1),
            error=error,
        )

    def _superseded(self, result: SeriesResult) -> bool:
        return self.results.is_superseded(result.id)

    def _write_sr(self, result: SeriesResult) -> tuple[str, str]:
        from ftlct.agent.reporting.sr import build_result_sr  # highdicom: only when sending

        headers = [
            pydicom.dcmread(self.store.path_of(instance), stop_before_pixels=True)
            for instance in self.store.instances_of(result.series_uid)
        ]
        sr = build_result_sr(result, headers, manufacturer="ftl-ct")
        buffer = io.BytesIO()
        pydicom.dcmwrite(buffer, sr, enforce_file_format=True)
        relpath = f"reports/{uid_key(result.series_uid)}-{result.id}.dcm"
        atomic_write_bytes(self.store.data_dir.root / relpath, buffer.getvalue(), mode=FILE_MODE)
        return relpath, str(sr.SOPInstanceUID)

    def _update(self, delivery: dict, **changes) -> None:
        self.deliveries.update(delivery["id"], **changes)
        delivery.update(changes)
