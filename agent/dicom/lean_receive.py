"""A leaner pynetdicom receive path for C-STORE: the same bytes on disk and on the wire.

Profiling ``ftl-agent serve`` on one association put most of its CPU per
instance in pynetdicom's own Python around the bytes, not in the bytes:

* ``AssociationSocket.recv`` reads a PDU 4096 bytes at a time, each piece
  appended to a ``bytearray`` (~130 reads for a 530 KB slice): here one
  ``recv_into`` a buffer of the PDU's length, in as few reads as the
  kernel allows;
* the chunked dataset file is a ``tempfile.NamedTemporaryFile`` (a wrapper
  whose every ``write`` and ``flush`` goes through ``__getattr__``), created
  when the C-STORE's command arrives: here a ``received_file.ReceivedFile``
  in ``incoming/``, that hashes what it writes and starts the kernel's
  write-back of each fragment;
* its File Meta Information is built as a pydicom ``FileMetaDataset`` and
  written by pydicom for every instance: here encoded directly (Explicit VR
  Little Endian, the same elements in the same order);
* each C-STORE-RSP is a pydicom command ``Dataset`` filled attribute by
  attribute and encoded: here the seven elements of a response with a status
  and no comment are encoded directly (Implicit VR Little Endian); anything
  else (an error comment, an offending element) takes pynetdicom's path;
* every association starts with a ``copy.deepcopy`` of the server's
  presentation contexts (171 storage SOP classes x 16 transfer syntaxes:
  ~29 ms of GIL per association, which four associations opened together
  queue behind): here each context is copied with its own transfer-syntax
  list, sharing the immutable UIDs, so negotiating one association still
  cannot change the server's or another association's contexts;
* pydicom validates every UID it constructs against the UID grammar (a regex,
  ~4 us each; the command set, the C-STORE primitive and pynetdicom's checks
  build dozens per instance) and only warns when one fails: pydicom's
  warnings are already silenced in the agent (``logs.configure_logging``:
  they could quote patient data), so its reading validation is switched off
  (``reading_validation_mode = IGNORE``: the same values, no checks);
  pynetdicom's own UID checks, which refuse, stay;
* pynetdicom binds its "standard" logging handlers to every PDU and DIMSE
  message of every association; they format DEBUG lines whether or not DEBUG
  is on (``_config.LOG_HANDLER_LEVEL = "none"`` leaves them unbound; our own
  log events stay).

The bytes are unchanged: tests compare each encoder with pynetdicom's and
pydicom's own, so an upgrade that changes them fails there. Every switch is
process-wide (the serve process has one SCP) and undone by the returned
function, as ``enable_chunked_receive`` and ``enable_prompt_polling`` are.
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Callable
from pathlib import Path

import pydicom.config
import pynetdicom.dimse
import pynetdicom.dimse_messages
import pynetdicom.transport
from pynetdicom import _config, evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.presentation import PresentationContext
from pynetdicom.transport import AssociationSocket

from ftlct.agent.dicom.received_file import ReceivedFile, make_file

# One recv_into buffer per PDU; a longer declared length (a PDU limit of 0 lets a peer
# announce anything) is read pynetdicom's way, as it arrives, never allocated up front.
MAX_PREALLOCATED_READ = 4 << 20
C_STORE_RSP_FIELD = 0x8001
NO_DATA_SET = 0x0101
_install_lock = threading.Lock()


# ---------------------------------------------------------------------- encoders
def _even(value: bytes, pad: bytes) -> bytes:
    return value + pad if len(value) % 2 else value


def _uid(value) -> bytes:
    return _even(str(value).encode("ascii"), b"\x00")


def _explicit(group: int, element: int, vr: bytes, value: bytes) -> bytes:
    if vr in (b"OB", b"OW", b"UN", b"SQ", b"UT"):
        return struct.pack("<HH2sHI", group, element, vr, 0, len(value)) + value
    return struct.pack("<HH2sH", group, element, vr, len(value)) + value


def _implicit(element: int, value: bytes) -> bytes:
    return struct.pack("<HHI", 0, element, len(value)) + value


class _FileMeta:
    """What ``create_file_meta`` was asked for; ``encode_file_meta`` writes it."""

    __slots__ = ("sop_class_uid", "sop_instance_uid", "transfer_syntax")

    def __init__(self, *, sop_class_uid, sop_instance_uid, transfer_syntax):
        self.sop_class_uid = sop_class_uid
        self.sop_instance_uid = sop_instance_uid
        self.transfer_syntax = transfer_syntax


def encode_file_meta(sop_class_uid, sop_instance_uid, transfer_syntax) -> bytes:
    """File Meta Information (group 0002) as pynetdicom's ``create_file_meta`` and pydicom's
    ``write_file_meta_info`` write it, with pynetdicom's implementation UID and version."""
    from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION

    body = b"".join(
        (
            _explicit(2, 0x0001, b"OB", b"\x00\x01"),
            _explicit(2, 0x0002, b"UI", _uid(sop_class_uid)),
            _explicit(2, 0x0003, b"UI", _uid(sop_instance_uid)),
            _explicit(2, 0x0010, b"UI", _uid(transfer_syntax)),
            _explicit(2, 0x0012, b"UI", _uid(PYNETDICOM_IMPLEMENTATION_UID)),
            _explicit(2, 0x0013, b"SH", _even(PYNETDICOM_IMPLEMENTATION_VERSION.encode(), b" ")),
        )
    )
    return _explicit(2, 0x0000, b"UL", struct.pack("<I", len(body))) + body


def encode_store_response(sop_class_uid, message_id: int, status: int, sop_instance_uid) -> bytes:
    """The command set of a C-STORE-RSP with a status and no error comment or offending
    element, as pynetdicom encodes it (Implicit VR Little Endian, group length first)."""
    body = b"".join(
        (
            _implicit(0x0002, _uid(sop_class_uid)),
            _implicit(0x0100, struct.pack("<H", C_STORE_RSP_FIELD)),
            _implicit(0x0120, struct.pack("<H", message_id)),
            _implicit(0x0800, struct.pack("<H", NO_DATA_SET)),
            _implicit(0x0900, struct.pack("<H", status)),
            _implicit(0x1000, _uid(sop_instance_uid)),
        )
    )
    return _implicit(0x0000, struct.pack("<I", len(body))) + body


def _plain_store_response(primitive) -> bool:
    return (
        type(primitive) is C_STORE
        and primitive.MessageIDBeingRespondedTo is not None
        and primitive.Status is not None
        and primitive.AffectedSOPClassUID is not None
        and primitive.AffectedSOPInstanceUID is not None
        and primitive.ErrorComment is None
        and primitive.OffendingElement is None
    )


# ---------------------------------------------------------------------- patches
def _lean_recv(original: Callable) -> Callable:
    def recv(self, nr_bytes: int) -> bytearray:
        if nr_bytes > MAX_PREALLOCATED_READ or self.socket is None:
            return original(self, nr_bytes)
        buffer = bytearray(nr_bytes)
        got = 0
        with memoryview(buffer) as view:
            while got < nr_bytes:
                read = self.socket.recv_into(view[got:], nr_bytes - got)
                if not read:  # connection closed: what arrived, as pynetdicom returns it
                    break
                got += read
        if got < nr_bytes:
            del buffer[got:]
        return buffer

    return recv


def _lean_send_msg(original: Callable) -> Callable:
    def send_msg(self, primitive, context_id: int) -> None:
        assoc = self.assoc
        if not _plain_store_response(primitive) or assoc.get_handlers(evt.EVT_DIMSE_SENT):
            return original(self, primitive, context_id)
        command = encode_store_response(
            primitive.AffectedSOPClassUID,
            primitive.MessageIDBeingRespondedTo,
            primitive.Status,
            primitive.AffectedSOPInstanceUID,
        )
        limit = self.maximum_pdu_size
        if limit and len(command) + 6 > limit:  # would need fragments: pynetdicom's path
            return original(self, primitive, context_id)
        pdata = P_DATA()
        pdata.presentation_data_value_list.append((context_id, b"\x03" + command))
        self.dul.send_pdu(pdata)

    return send_msg


def copy_context(context: PresentationContext) -> PresentationContext:
    """``deepcopy(context)`` for what a context holds: immutable UIDs and flags, and the one
    mutable list of transfer syntaxes, copied."""
    copied = PresentationContext.__new__(PresentationContext)
    copied.__dict__.update(context.__dict__)
    copied._transfer_syntax = list(context._transfer_syntax)
    return copied


def _contexts_copied_lean(deepcopy: Callable) -> Callable:
    def copy_contexts(value, memo=None):
        if isinstance(value, list) and all(type(item) is PresentationContext for item in value):
            return [copy_context(item) for item in value]
        return deepcopy(value, memo)

    return copy_contexts


def enable_lean_receive(incoming: Path) -> Callable[[], None]:
    """Install the leaner receive path (datasets written to ``incoming``); returns the undo."""
    messages = pynetdicom.dimse_messages
    provider = pynetdicom.dimse.DIMSEServiceProvider
    switched = (
        (_config, "LOG_HANDLER_LEVEL"),
        (AssociationSocket, "recv"),
        (provider, "send_msg"),
        (messages, "NamedTemporaryFile"),
        (messages, "create_file_meta"),
        (messages, "write_file_meta_info"),
        (pynetdicom.transport, "deepcopy"),
        (pydicom.config.settings, "reading_validation_mode"),
    )
    with _install_lock:
        before = [getattr(owner, name) for owner, name in switched]
        _, recv, send_msg, _, _, write_file_meta_info, deepcopy, _ = before

        def new_file(*args, **kwargs) -> ReceivedFile:
            return ReceivedFile(make_file(incoming))

        def write_meta(fp, meta, *args, **kwargs):
            if isinstance(meta, _FileMeta):
                fp.write(
                    encode_file_meta(
                        meta.sop_class_uid, meta.sop_instance_uid, meta.transfer_syntax
                    )
                )
                return
            write_file_meta_info(fp, meta, *args, **kwargs)

        _config.LOG_HANDLER_LEVEL = "none"
        AssociationSocket.recv = _lean_recv(recv)
        provider.send_msg = _lean_send_msg(send_msg)
        messages.NamedTemporaryFile = new_file
        messages.create_file_meta = _FileMeta
        messages.write_file_meta_info = write_meta
        pynetdicom.transport.deepcopy = _contexts_copied_lean(deepcopy)
        pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE

    def undo() -> None:
        with _install_lock:
            for (owner, name), value in zip(switched, before, strict=True):
                setattr(owner, name, value)

    return undo
