"""A C-STORE's middle dataset fragments written straight from the PDU that carries them.

For every P-DATA-TF PDU pynetdicom copies the PDU's bytes, decodes them into a
PDU object and its PDV items (a copy of each value), builds a P-DATA primitive
from those, queues an FSM event, runs the state machine's DT-2 action, and
hands the primitive to the DIMSE message decoder, which writes the fragment
(one more copy, ``data[1:]``) to the dataset's file. A 525 KB slice from a
sender with 128 KiB PDUs takes that path five times, all of it Python under
the GIL on the association's network thread, while the sender waits.

Here the network thread's PDU read recognises the common PDU in the middle of
a dataset and writes it at once: a P-DATA-TF PDU, association established
(Sta6), with a C-STORE-RQ's dataset being received into its file
(``ReceivedFile``, lean receive), and every PDV in the PDU a dataset fragment
(control header bits 0 and 1 clear: not command, not the last one) of that
message's presentation context, each inside the PDU. The receive limits see
each fragment as before (``ReceiveLimits.dataset_fragment``: size cap,
watermark); pynetdicom's idle timer is restarted as before (by the reactor,
after the read). Everything else takes pynetdicom's path exactly as it would
have: the command fragments, the last fragment (which completes the message
and hands it to the handler), other PDU types, a PDV of another context, a
PDV whose length does not fit, and any association where something else
listens to received PDUs or bytes (``EVT_PDU_RECV`` handlers other than the
limits', any ``EVT_DATA_RECV`` handler). The bytes written are the same.

The switch is process-wide (the serve process has one SCP) and undone when
the SCP stops, as the other pynetdicom switches are.
"""

from __future__ import annotations

import logging
import struct
import threading
from collections.abc import Callable

from pynetdicom import evt
from pynetdicom.dul import DULServiceProvider

from ftlct.agent.dicom.receive_limits import ReceiveLimits
from ftlct.agent.dicom.received_file import ReceivedFile

log = logging.getLogger(__name__)

P_DATA_TF = 0x04
PDU_TYPES = frozenset(range(0x01, 0x08))  # A-ASSOCIATE-RQ .. A-ABORT (PS3.8 9.3)
PDV_HEADER = 6  # item length (4), presentation context ID (1), message control header (1)
_install_lock = threading.Lock()


class Counter:
    """Fragments and bytes the fast path wrote (the tests read it)."""

    def __init__(self):
        self.fragments = 0
        self.bytes = 0


written = Counter()


def dataset_fragments(body, context_id: int) -> list[tuple[int, int]] | None:
    """The (start, end) of each PDV value in a P-DATA-TF body, if every PDV is a middle
    dataset fragment of ``context_id`` and fits in the body; None otherwise."""
    spans = []
    offset, size = 0, len(body)
    while offset < size:
        if offset + PDV_HEADER > size:
            return None
        (length,) = struct.unpack_from(">L", body, offset)
        end = offset + 4 + length
        if length < 2 or end > size:
            return None
        if body[offset + 4] != context_id or body[offset + 5] & 0x03:
            return None  # another context, a command fragment, or the last fragment
        spans.append((offset + PDV_HEADER, end))
        offset = end
    return spans or None


def _limits_of(assoc) -> ReceiveLimits | None:
    """The receive limits listening to this association's PDUs, if nothing else listens to
    its PDUs or bytes (a handler that would miss the fast path's fragments)."""
    if assoc.get_handlers(evt.EVT_DATA_RECV):
        return None
    listening = assoc.get_handlers(evt.EVT_PDU_RECV)
    if len(listening) != 1:
        return None
    handler = listening[0][0]
    owner = getattr(handler, "__self__", None)
    if not isinstance(owner, ReceiveLimits) or handler.__func__ is not ReceiveLimits._on_pdu:
        return None
    return owner


def write_fragments(dul: DULServiceProvider, body: bytes | bytearray) -> bool:
    """Write a P-DATA-TF body's dataset fragments to the C-STORE being received; False
    (nothing done) where the PDU is not that case and must take pynetdicom's path."""
    if dul.state_machine.current_state != "Sta6":
        return False
    assoc = dul.assoc
    message = getattr(getattr(assoc, "dimse", None), "message", None)
    target = getattr(message, "_data_set_file", None)
    if not isinstance(target, ReceivedFile) or target.closed:
        return False
    context_id = getattr(message, "context_id", None)
    spans = None if context_id is None else dataset_fragments(body, context_id)
    if spans is None:
        return False
    limits = _limits_of(assoc)
    if limits is None:
        return False
    with memoryview(body) as view:
        for start, end in spans:
            if not limits.dataset_fragment(assoc, end - start + 1):  # the value: header byte too
                return True  # refused: the association is being aborted, the PDU is spent
            target.write(view[start:end])
            written.fragments += 1
            written.bytes += end - start
    return True


def read_pdu_data(dul: DULServiceProvider) -> None:
    """The DUL's read of one PDU (header, then body), the middle dataset fragments of a
    C-STORE written at once and every other PDU decoded and queued by pynetdicom."""
    try:
        header = dul.socket.recv(6)
        if len(header) < 6:
            dul.event_queue.put("Evt17")  # closed before a whole PDU header
            return
        pdu_type, _, length = struct.unpack(">BBL", header)
        if pdu_type not in PDU_TYPES:
            log.debug("unknown PDU type 0x%02X", pdu_type)
            dul.event_queue.put("Evt19")  # unrecognised PDU
            return
        body = dul.socket.recv(length)
    except (OSError, TimeoutError):
        dul.event_queue.put("Evt17")  # transport connection closed
        return
    if len(body) != length:
        dul.event_queue.put("Evt17")  # closed inside the PDU
        return
    if pdu_type == P_DATA_TF and write_fragments(dul, body):
        return
    try:
        pdu, event = dul._decode_pdu(header + body)
    except Exception:
        log.debug("undecodable PDU", exc_info=True)
        dul.event_queue.put("Evt19")
        return
    dul.event_queue.put(event)
    dul._recv_pdu.put(pdu)


def enable_pdata_fast_path() -> Callable[[], None]:
    """Route every DUL's PDU reads through ``read_pdu_data``; returns the undo."""
    with _install_lock:
        before = DULServiceProvider._read_pdu_data
        DULServiceProvider._read_pdu_data = read_pdu_data

    def undo() -> None:
        with _install_lock:
            if DULServiceProvider._read_pdu_data is read_pdu_data:
                DULServiceProvider._read_pdu_data = before

    return undo
