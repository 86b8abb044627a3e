"""Storage SCP + Verification: pynetdicom event handlers over ``InstanceStore``.

The dataset arrives exactly as the peer encoded it, written to a file in
``incoming/`` fragment by fragment (``receive_limits``: chunked receive, size
cap, watermark; ``lean_receive``: the file hashed and its write-back started
as it is written, leaner PDU reads and responses), never decoded or held whole
in memory; the handler hands the file and its sha256 to the store and maps the
store's outcome to a C-STORE status. The status goes back only after the store
returned, i.e. after the bytes and their index row are durable.
"""

from __future__ import annotations

import logging
import socket
import sqlite3
import threading
import time
from datetime import datetime
from pathlib import Path

from pynetdicom import AE, evt
from pynetdicom.sop_class import Verification
from pynetdicom.transport import ThreadedAssociationServer

from ftlct.agent.dicom.admission import Admission, pynetdicom_backstop
from ftlct.agent.dicom.contexts import STORAGE_SOP_CLASSES, TRANSFER_SYNTAXES
from ftlct.agent.dicom.inline_store import enable_inline_store
from ftlct.agent.dicom.lean_receive import enable_lean_receive
from ftlct.agent.dicom.pdata_fast_path import enable_pdata_fast_path
from ftlct.agent.dicom.prompt_polling import BUSY_WINDOW_S as RECEIVING_WINDOW_S
from ftlct.agent.dicom.prompt_polling import PromptPolling, enable_prompt_polling
from ftlct.agent.dicom.receive_limits import ReceiveLimits, enable_chunked_receive
from ftlct.agent.dicom.received_file import ReceivedFile
from ftlct.agent.dicom.status_codes import CANNOT_UNDERSTAND, OUT_OF_RESOURCES, store_status
from ftlct.agent.dicom.tls import certificate_matches, peer_ssl_socket, server_ssl_context
from ftlct.agent.events import INSTANCE_STORED, EventBus
from ftlct.agent.logs import log_event
from ftlct.agent.metrics import AgentMetrics
from ftlct.agent.settings import DicomSettings, TlsSettings
from ftlct.agent.store.disk import DiskGuard
from ftlct.agent.store.instance_store import InstanceStore, Outcome

log = logging.getLogger(__name__)

# A-ASSOCIATE-RJ: rejected-transient, by the service user, no reason given (PS3.8 9.3.4).
REJECT_TRANSIENT = (0x02, 0x01, 0x01)
# A-ASSOCIATE-RJ: rejected-permanent, by the service user, calling AE title not recognised.
REJECT_CALLING_AE = (0x01, 0x01, 0x03)
# A-ASSOCIATE-RJ: rejected-transient, by the service provider (presentation), local limit
# exceeded: what pynetdicom answers beyond its own maximum_associations.
REJECT_LOCAL_LIMIT = (0x02, 0x03, 0x02)
# After SIGTERM, associations with no C-STORE for this long are closed without waiting more.
IDLE_GRACE_S = 1.0


def storage_ae(settings: DicomSettings) -> AE:
    """An AE accepting every storage SOP class in every transfer syntax, plus C-ECHO."""
    ae = AE(ae_title=settings.ae_title)
    for sop_class in STORAGE_SOP_CLASSES:
        # Stored as received: there is no reason to refuse a compressed syntax.
        ae.add_supported_context(sop_class, TRANSFER_SYNTAXES)
    ae.add_supported_context(Verification, TRANSFER_SYNTAXES[:4])
    ae.require_calling_aet = list(settings.allow_ae)
    # Ours counts (admission.py); pynetdicom's, which counts threads still ending, is a backstop.
    ae.maximum_associations = pynetdicom_backstop(settings.max_associations)
    ae.maximum_pdu_size = settings.max_pdu
    ae.acse_timeout = settings.acse_timeout_s
    ae.dimse_timeout = settings.dimse_timeout_s
    ae.network_timeout = settings.network_timeout_s
    return ae


def shared_socket_server(listener: socket.socket) -> type[ThreadedAssociationServer]:
    """A pynetdicom server class that accepts on ``listener`` (already bound and listening,
    shared with other processes) instead of binding its own socket."""

    class SharedSocketServer(ThreadedAssociationServer):
        def server_bind(self) -> None:
            self.socket.close()  # the unbound socket TCPServer made
            self.socket = listener
            self.server_address = listener.getsockname()

        def server_activate(self) -> None:
            pass  # listening already

        def server_close(self) -> None:
            # Close this process's descriptor only: shutdown() would stop the socket itself,
            # for every process that shares it.
            self.socket.close()

    return SharedSocketServer


class StorageScp:
    def __init__(
        self,
        dicom: DicomSettings,
        tls: TlsSettings,
        store: InstanceStore,
        guard: DiskGuard,
        events: EventBus,
        metrics: AgentMetrics,
        *,
        listener: socket.socket | None = None,
        admission=None,
    ):
        """``listener``: accept on this socket (a receive worker's share of the serve process's
        socket; ``receive_workers``) instead of binding ``dicom.host:port``. ``admission``:
        counts open associations against ``dicom.max_associations`` (default: this
        process's; a worker's counts over every process, ``admission.SharedAdmission``)."""
        self.settings = dicom
        self.tls = tls
        self.store = store
        self.guard = guard
        self.events = events
        self.metrics = metrics
        self.limits = ReceiveLimits(
            dicom.max_pdu, dicom.max_dataset_bytes, guard, self._dataset_aborted
        )
        self._server = None
        self.polling = PromptPolling()
        self._undos: list = []  # process-wide pynetdicom switches, undone at stop
        self._in_flight = 0
        self._last_store_done = time.monotonic()
        self._lock = threading.Lock()
        self.listener = listener
        self.admission = admission or Admission(dicom.max_associations)
        self._admitted: dict[int, object] = {}  # associations the admission counted, by id()

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        ae = storage_ae(self.settings)
        handlers = [
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_ACCEPTED, self._on_accepted),
            (evt.EVT_REJECTED, self._on_rejected),
            (evt.EVT_RELEASED, self._association_ended),
            (evt.EVT_ABORTED, self._association_ended),
            (evt.EVT_CONN_CLOSE, self._association_ended),
            *self.limits.handlers(),
        ]
        where = f"{self.settings.host}:{self.settings.port}"
        self._undos = [
            enable_chunked_receive(self.store.data_dir.incoming),
            enable_prompt_polling(self.polling),
            enable_lean_receive(self.store.data_dir.incoming),
            enable_pdata_fast_path(),
            enable_inline_store(StorageScp._on_store),
        ]
        try:
            if self.listener is None:
                self._server = ae.start_server(
                    (self.settings.host, self.settings.port),
                    block=False,
                    evt_handlers=handlers,
                    ssl_context=server_ssl_context(self.tls),
                )
            else:
                self._server = self._serve_shared(ae, handlers)
        except OSError as exc:
            self._undo_switches()
            raise OSError(exc.errno, f"DICOM on {where}: {exc.strerror or exc}") from exc
        log_event(
            log,
            "dicom_listening",
            ae_title=self.settings.ae_title,
            host=self.settings.host,
            port=self.settings.port,
            tls=self.tls.enabled,
            allow_ae=",".join(self.settings.allow_ae) or "any",
        )

    def _serve_shared(self, ae: AE, handlers: list):
        """``ae.start_server(block=False)`` on the shared listening socket."""
        server = ae.make_server(
            self.listener.getsockname(),
            evt_handlers=handlers,
            ssl_context=server_ssl_context(self.tls),
            server_class=shared_socket_server(self.listener),
        )
        stamp = datetime.now().strftime("%Y%m%d%H%M%S")
        thread = threading.Thread(
            target=server.serve_forever, name=f"AcceptorServer@{stamp}", daemon=True
        )
        thread.start()
        ae._servers.append(server)  # as start_server does: server.shutdown() removes it
        return server

    def stop(self, drain_timeout_s: float | None = None) -> None:
        """Stop accepting, let in-flight stores finish, then close what is left."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()  # closes the listening socket; open associations carry on
        timeout = self.settings.drain_timeout_s if drain_timeout_s is None else drain_timeout_s
        deadline = time.monotonic() + timeout
        while server.active_associations and time.monotonic() < deadline:
            with self._lock:
                idle = self._in_flight == 0 and (
                    time.monotonic() - self._last_store_done > IDLE_GRACE_S
                )
            if idle:
                break
            time.sleep(0.05)
        remaining = server.active_associations
        for assoc in remaining:
            assoc.abort()
        self._undo_switches()
        log_event(log, "dicom_stopped", aborted_associations=len(remaining))

    def _undo_switches(self) -> None:
        undos, self._undos = self._undos, []
        for undo in reversed(undos):
            undo()

    @property
    def running(self) -> bool:
        return self._server is not None

    def receiving(self) -> bool:
        """Whether instances are arriving: a C-STORE in flight, or one done just now (a
        sender's next one follows within milliseconds)."""
        with self._lock:
            return self._in_flight > 0 or (
                time.monotonic() - self._last_store_done < RECEIVING_WINDOW_S
            )

    # ------------------------------------------------------------------ handlers
    def _on_requested(self, event) -> None:
        calling_ae = str(event.assoc.requestor.primitive.calling_ae_title).strip()
        # Refusing the whole association is kinder to a sender than failing every C-STORE.
        if self.guard.below_watermark():
            self._reject(event.assoc, REJECT_TRANSIENT, "disk below watermark", calling_ae)
        elif self.tls.ae_certificates and not self._certificate_fits(event.assoc, calling_ae):
            self._reject(
                event.assoc,
                REJECT_CALLING_AE,
                "calling AE title not bound to the client certificate presented",
                calling_ae,
            )
        else:
            self._release_ended()
            if self.admission.admit():
                with self._lock:
                    self._admitted[id(event.assoc)] = event.assoc
            else:
                self._reject(
                    event.assoc,
                    REJECT_LOCAL_LIMIT,
                    f"dicom.max_associations ({self.settings.max_associations}) open",
                    calling_ae,
                )

    def _association_ended(self, event) -> None:
        """The first of released, aborted and connection closed uncounts the association."""
        with self._lock:
            counted = self._admitted.pop(id(event.assoc), None) is not None
        if counted:
            self.admission.release()

    def _release_ended(self) -> None:
        """Uncount associations whose thread ended without a connection-closed event."""
        with self._lock:
            ended = [key for key, assoc in self._admitted.items() if not assoc.is_alive()]
            for key in ended:
                del self._admitted[key]
        for _ in ended:
            self.admission.release()

    def _certificate_fits(self, assoc, calling_ae: str) -> bool:
        wanted = self.tls.ae_certificates.get(calling_ae)
        sock = peer_ssl_socket(assoc)
        return wanted is not None and sock is not None and certificate_matches(sock, wanted)

    def _reject(self, assoc, reason: tuple[int, int, int], why: str, calling_ae: str) -> None:
        log_event(log, "association_refused", logging.WARNING, reason=why, calling_ae=calling_ae)
        self.metrics.associations.labels("rejected").inc()
        assoc.acse.send_reject(*reason)
        assoc.kill()  # as pynetdicom does after its own rejections: flushes the PDU

    def _dataset_aborted(self, calling_ae: str, reason: str, received: int) -> None:
        """A dataset refused while it arrived: counted, and remembered in the quarantine."""
        self.metrics.instances_received.labels("aborted").inc()
        self.store.quarantine.record("aborted", reason, received, calling_ae)

    def _on_accepted(self, event) -> None:
        self.metrics.associations.labels("accepted").inc()

    def _on_rejected(self, event) -> None:
        self.metrics.associations.labels("rejected").inc()

    def _on_echo(self, event) -> int:
        return 0x0000

    def _on_store(self, event) -> int:
        self.polling.busy()  # the response, then the sender's next request, come right away
        with self._lock:
            self._in_flight += 1
        try:
            return self._store(event)
        finally:
            self.polling.busy()
            with self._lock:
                self._in_flight -= 1
                self._last_store_done = time.monotonic()

    def _store(self, event) -> int:
        request = event.request
        calling_ae = str(event.assoc.requestor.ae_title).strip()
        try:
            path = Path(event.dataset_path)  # chunked receive: the file pynetdicom wrote
            size = path.stat().st_size
            received = getattr(request, "_dataset_file", None)
            result = self.store.put_file(
                path,
                # lean receive hashed the bytes as it wrote them: no second read of the file
                sha256=received.sha256() if isinstance(received, ReceivedFile) else None,
                announced_sop_class=str(request.AffectedSOPClassUID or "") or None,
                announced_sop_instance=str(request.AffectedSOPInstanceUID or "") or None,
                calling_ae=calling_ae,
            )
        except (OSError, sqlite3.OperationalError) as exc:
            log_event(log, "store_failed", logging.ERROR, error=f"{type(exc).__name__}: {exc}")
            self.metrics.instances_received.labels("error").inc()
            return OUT_OF_RESOURCES
        except Exception:
            log.exception("store handler failed", extra={"event": "store_failed", "fields": {}})
            self.metrics.instances_received.labels("error").inc()
            return CANNOT_UNDERSTAND
        status = store_status(result.outcome)
        self.metrics.instances_received.labels(result.outcome.value).inc()
        if result.ok:
            if result.outcome in (Outcome.STORED, Outcome.REPLACED):
                self.metrics.bytes_received.inc(size)
            self.events.emit(INSTANCE_STORED, result.instance)
            log.debug(
                "stored",
                extra={
                    "event": "instance_stored",
                    "fields": {
                        "sop_instance_uid": result.instance.sop_instance_uid,
                        "outcome": result.outcome.value,
                    },
                },
            )
        else:
            log_event(
                log,
                "instance_refused",
                logging.WARNING,
                status=f"0x{status:04X}",
                outcome=result.outcome.value,
                # A parser's message may quote element values (patient data): it stays in the
                # quarantine sidecar inside the data dir, not in the logs.
                reason=(
                    "unparsable dataset (details in quarantine)"
                    if result.outcome is Outcome.UNREADABLE
                    else result.reason
                ),
                calling_ae=calling_ae,
                quarantine_id=result.quarantine_id,
            )
        return status
