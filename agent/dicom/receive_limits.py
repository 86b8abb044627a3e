"""Receive C-STOREs to disk in PDU-sized pieces, within a size cap and the disk watermark.

pynetdicom collects a dataset in memory by default; with its chunked receive
(``_config.STORE_RECV_CHUNKED_DATASET``) it writes each P-DATA fragment to a
temporary file instead, and the C-STORE handler gets ``event.dataset_path``.
Those files are put in ``DATA_DIR/incoming/`` (same file system as
``instances/``: the watermark covers them and the store renames them into
place without a copy).

What can be refused before the bytes are taken, and how:

* an association, while the disk is below the watermark (``StorageScp``);
* a PDU longer than we can hold: pynetdicom reads a PDU whole into memory
  before looking at it, whatever its declared length, so the socket read is
  bounded at max(``dicom.max_pdu``, 1 MiB) and a longer PDU is answered with
  an A-ABORT before its body is read;
* a dataset, fragment by fragment as it arrives (``EVT_PDU_RECV`` fires before
  pynetdicom writes the fragment): once it passes ``dicom.max_dataset_bytes``,
  or its next fragment would take the disk below the watermark, the
  association is aborted (A-ABORT), the partial file deleted and the refusal
  recorded. DIMSE has no way to answer a C-STORE before its last fragment, so
  an abort is the earliest answer there is; a C-STORE request carries no size,
  so nothing can be refused before its first fragment.
"""

from __future__ import annotations

import logging
import tempfile
import threading
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

from pynetdicom import _config
from pynetdicom.pdu import P_DATA_TF

from ftlct.agent.logs import log_event
from ftlct.agent.store.disk import DiskGuard

log = logging.getLogger(__name__)

MIN_READ_BOUND = 1 << 20  # association requests with many contexts are tens of KiB
# A-ABORT PDU: type 7, length 4, source 2 (service provider), reason 6 (invalid PDU parameter).
ABORT_INVALID_PDU = bytes([0x07, 0, 0, 0, 0, 4, 0, 0, 0x02, 0x06])


def enable_chunked_receive(incoming: Path) -> Callable[[], None]:
    """Make pynetdicom write received datasets to files in ``incoming``; returns the undo.

    Both knobs are process-wide (pynetdicom's ``_config`` and ``tempfile.tempdir``, which
    its ``NamedTemporaryFile`` uses): the serve process has one SCP.
    """
    before = (_config.STORE_RECV_CHUNKED_DATASET, tempfile.tempdir)
    _config.STORE_RECV_CHUNKED_DATASET = True
    tempfile.tempdir = str(incoming)

    def undo() -> None:
        _config.STORE_RECV_CHUNKED_DATASET, tempfile.tempdir = before

    return undo


@dataclass
class _Transfer:
    """The dataset arriving on one association."""

    received: int = 0
    refused: str = ""


class ReceiveLimits:
    """pynetdicom notification handlers that enforce the limits above.

    ``on_refused(calling_ae, reason, size)`` is told of every dataset aborted mid-way.
    """

    def __init__(
        self,
        max_pdu: int,
        max_dataset_bytes: int,
        guard: DiskGuard,
        on_refused: Callable[[str, str, int], None],
    ):
        self.read_bound = max(max_pdu, MIN_READ_BOUND) if max_pdu else 0
        self.max_dataset_bytes = max_dataset_bytes
        self.guard = guard
        self.on_refused = on_refused
        self._transfers: dict[object, _Transfer] = {}
        self._lock = threading.Lock()

    def handlers(self) -> list[tuple]:
        from pynetdicom import evt

        return [
            (evt.EVT_CONN_OPEN, self._on_open),
            (evt.EVT_PDU_RECV, self._on_pdu),
            (evt.EVT_CONN_CLOSE, self._on_close),
        ]

    # ------------------------------------------------------------------ handlers
    def _on_open(self, event) -> None:
        with self._lock:
            self._transfers[event.assoc] = _Transfer()
        if self.read_bound:
            _bound_reads(event.assoc, self.read_bound)

    def _on_pdu(self, event) -> None:
        if not isinstance(event.pdu, P_DATA_TF):
            return
        with self._lock:
            transfer = self._transfers.setdefault(event.assoc, _Transfer())
        if transfer.refused:
            return
        for item in event.pdu.presentation_data_value_items:
            value = item.presentation_data_value or b""
            if not value:
                continue
            control = value[0]
            if control & 1:  # a command fragment; the last one starts a new message
                if control & 2:
                    transfer.received = 0
                continue
            if not self._count(event.assoc, transfer, len(value)):
                return

    def dataset_fragment(self, assoc, value_length: int) -> bool:
        """One dataset fragment (its PDV value: control header and data, ``value_length``
        bytes) about to be written, seen by the limits as ``EVT_PDU_RECV`` would show it
        (``pdata_fast_path``); False once the dataset is refused (the association is being
        aborted and nothing more of it may be written)."""
        with self._lock:
            transfer = self._transfers.setdefault(assoc, _Transfer())
        return not transfer.refused and self._count(assoc, transfer, value_length)

    def _count(self, assoc, transfer: _Transfer, value_length: int) -> bool:
        """Add a fragment to the dataset's size; False (and the association aborted) if it
        passes the size cap or the watermark."""
        transfer.received += value_length - 1
        if self.max_dataset_bytes and transfer.received > self.max_dataset_bytes:
            self._refuse(
                assoc,
                transfer,
                f"dataset larger than dicom.max_dataset_bytes ({self.max_dataset_bytes})",
            )
            return False
        if self.guard.below_watermark(value_length):
            self._refuse(
                assoc,
                transfer,
                f"free space below the {self.guard.min_free_bytes} byte watermark",
            )
            return False
        return True

    def _on_close(self, event) -> None:
        with self._lock:
            self._transfers.pop(event.assoc, None)
        _discard_partial_dataset(event.assoc)

    # ------------------------------------------------------------------ refusal
    def _refuse(self, assoc, transfer: _Transfer, reason: str) -> None:
        transfer.refused = reason
        calling_ae = _calling_ae(assoc)
        log_event(
            log,
            "dataset_aborted",
            logging.WARNING,
            reason=reason,
            received_bytes=transfer.received,
            calling_ae=calling_ae,
        )
        # Non-blocking: this runs on the association's own DUL thread, which sends it.
        assoc.abort(block=False)
        self.on_refused(calling_ae, reason, transfer.received)


def _calling_ae(assoc) -> str:
    with suppress(Exception):
        return str(assoc.requestor.ae_title).strip()
    return ""


def _bound_reads(assoc, bound: int) -> None:
    """Refuse (A-ABORT, then close) a PDU whose declared length exceeds ``bound``.

    pynetdicom reads the 6-byte PDU header, then ``recv(length)`` of the body into one
    buffer; the body read is the one that must not happen for a hostile length.
    """
    sock = assoc.dul.socket
    read = sock.recv

    def bounded(nr_bytes: int):
        if nr_bytes > bound:
            log_event(
                log,
                "pdu_refused",
                logging.WARNING,
                declared_bytes=nr_bytes,
                bound=bound,
                calling_ae=_calling_ae(assoc),
            )
            with suppress(Exception):
                sock.send(ABORT_INVALID_PDU)
            raise OSError(f"PDU of {nr_bytes} bytes is over the {bound} byte bound")
        return read(nr_bytes)

    sock.recv = bounded


def _discard_partial_dataset(assoc) -> None:
    """Delete the temp file of a dataset that never finished (aborted, or the peer vanished).

    pynetdicom keeps the message being received on ``assoc.dimse.message`` and forgets its
    file only once a message completes; at connection close, one still there is partial.
    """
    message = getattr(getattr(assoc, "dimse", None), "message", None)
    handle = getattr(message, "_data_set_file", None)
    if handle is None:
        return
    with suppress(OSError):
        handle.close()
    with suppress(OSError):
        Path(handle.name).unlink(missing_ok=True)
