"""The lean receive path writes and sends the bytes pynetdicom and pydicom would, and undoes.

Each encoder is compared with the library code it stands in for, so a pynetdicom
or pydicom upgrade that changes those bytes (or the hooks patched) fails here.
"""

from __future__ import annotations

import io
import socket
import tempfile
import threading
from pathlib import Path

import pydicom
import pynetdicom.dimse
import pynetdicom.dimse_messages
import pytest
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEGLosslessSV1
from pynetdicom import _config
from pynetdicom.dimse_messages import C_STORE_RSP
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import create_file_meta
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.sop_class import CTImageStorage
from pynetdicom.transport import AssociationSocket

from ftlct.agent.dicom.lean_receive import (
    enable_lean_receive,
    encode_file_meta,
    encode_store_response,
)

# Odd and even lengths: UIDs are padded with NUL to an even length.
UIDS = ["1.2.3", "1.2.34", "1.2.826.0.1.3680043.8.498.12345678901234567890123456789012345"]


def pydicom_file_meta(sop_class, sop_instance, syntax) -> bytes:
    out = io.BytesIO()
    write_file_meta_info(
        out,
        create_file_meta(
            sop_class_uid=sop_class, sop_instance_uid=sop_instance, transfer_syntax=syntax
        ),
    )
    return out.getvalue()


@pytest.mark.parametrize("sop_instance", UIDS)
@pytest.mark.parametrize(
    "syntax", [ImplicitVRLittleEndian, ExplicitVRLittleEndian, JPEGLosslessSV1]
)
def test_file_meta_is_the_bytes_pydicom_writes_for_pynetdicoms_file_meta(sop_instance, syntax):
    expected = pydicom_file_meta(CTImageStorage, sop_instance, syntax)
    assert encode_file_meta(CTImageStorage, sop_instance, syntax) == expected


def pynetdicom_store_response(sop_class, message_id, status, sop_instance) -> bytes:
    primitive = C_STORE()
    primitive.MessageIDBeingRespondedTo = message_id
    primitive.AffectedSOPClassUID = sop_class
    primitive.AffectedSOPInstanceUID = sop_instance
    primitive.Status = status
    message = C_STORE_RSP()
    message.primitive_to_message(primitive)
    (pdata,) = list(message.encode_msg(1, 0))
    ((_, value),) = pdata.presentation_data_value_list
    assert value[0] == 0x03  # the last (only) command fragment
    return value[1:]


@pytest.mark.parametrize("sop_class", [CTImageStorage, "1.2.3"])
@pytest.mark.parametrize("sop_instance", UIDS)
@pytest.mark.parametrize("status", [0x0000, 0xA700, 0xA900, 0xB000, 0xC000])
def test_store_response_is_the_command_set_pynetdicom_encodes(sop_class, sop_instance, status):
    for message_id in (1, 2, 65535):
        expected = pynetdicom_store_response(sop_class, message_id, status, sop_instance)
        assert encode_store_response(sop_class, message_id, status, sop_instance) == expected


class Dul:
    def __init__(self):
        self.sent: list[P_DATA] = []

    def send_pdu(self, primitive):
        self.sent.append(primitive)


class Assoc:
    def __init__(self, handlers=()):
        self.handlers = list(handlers)
        self.dul = Dul()
        self.is_requestor = False
        self.requestor = type("Requestor", (), {"maximum_length": 16384})()
        # pynetdicom's trigger swaps abort for a notification handler and back
        self._abort_nonblocking = self._abort_blocking = self.abort = None

    def get_handlers(self, event):
        return self.handlers


def sent_by(provider_assoc, primitive) -> list[bytes]:
    provider = pynetdicom.dimse.DIMSEServiceProvider(provider_assoc)
    provider.send_msg(primitive, 3)
    return [value for p in provider_assoc.dul.sent for _, value in p.presentation_data_value_list]


def response(**fields) -> C_STORE:
    primitive = C_STORE()
    primitive.MessageIDBeingRespondedTo = 7
    primitive.AffectedSOPClassUID = CTImageStorage
    primitive.AffectedSOPInstanceUID = "1.2.3.4"
    primitive.Status = 0x0000
    for name, value in fields.items():
        setattr(primitive, name, value)
    return primitive


def test_a_plain_response_and_one_with_an_error_comment_reach_the_dul_as_pynetdicom_sends_them(
    tmp_path,
):
    primitives = [response(), response(Status=0xC000, ErrorComment="cannot parse")]
    expected = [sent_by(Assoc(), p) for p in primitives]
    undo = enable_lean_receive(tmp_path)
    try:
        lean = [sent_by(Assoc(), p) for p in primitives]
        # a bound EVT_DIMSE_SENT handler wants pynetdicom's message object: its path
        observed = sent_by(Assoc(handlers=[(lambda event: None, None)]), primitives[0])
    finally:
        undo()
    assert lean == expected
    assert observed == expected[0]


def test_a_pdu_is_read_whole_and_a_closed_connection_returns_what_arrived():
    left, right = socket.socketpair()
    sock = AssociationSocket.__new__(AssociationSocket)
    sock.socket = left
    undo = enable_lean_receive(Path(tempfile.gettempdir()))
    try:
        payload = bytes(range(256)) * 1000  # more than a socket buffer: several reads

        def send():
            right.sendall(payload + b"tail")
            right.close()

        sender = threading.Thread(target=send)
        sender.start()
        whole = sock.recv(len(payload))
        rest = sock.recv(100)  # the peer closed after 4 bytes
        sender.join()
    finally:
        undo()
        left.close()
    assert (bytes(whole), bytes(rest)) == (payload, b"tail")


def test_enable_installs_every_switch_and_undo_restores_each(tmp_path):
    messages = pynetdicom.dimse_messages

    def current():
        return (
            _config.LOG_HANDLER_LEVEL,
            AssociationSocket.recv,
            pynetdicom.dimse.DIMSEServiceProvider.send_msg,
            messages.NamedTemporaryFile,
            messages.create_file_meta,
            messages.write_file_meta_info,
            pynetdicom.transport.deepcopy,
            pydicom.config.settings.reading_validation_mode,
        )

    originals = current()
    undo = enable_lean_receive(tmp_path)
    try:
        installed = current()
    finally:
        undo()
    assert all(a is not b for a, b in zip(installed, originals, strict=True))
    assert installed[0] == "none"
    assert installed[-1] == pydicom.config.IGNORE != originals[-1]
    assert current() == originals


def test_a_received_dataset_is_the_part10_file_pynetdicom_would_have_written(tmp_path):
    """decode_msg through the patched hooks: preamble, file meta and dataset as pydicom reads."""
    undo = enable_lean_receive(tmp_path)
    try:
        meta = messages_create(CTImageStorage, "1.2.3.4", ExplicitVRLittleEndian)
        received = pynetdicom.dimse_messages.NamedTemporaryFile(delete=False, mode="wb")
        received.write(b"\x00" * 128)
        received.write(b"DICM")
        pynetdicom.dimse_messages.write_file_meta_info(received, meta)
        received.close()
    finally:
        undo()
    written = Path(received.name).read_bytes()
    assert written[132:] == pydicom_file_meta(CTImageStorage, "1.2.3.4", ExplicitVRLittleEndian)
    assert pydicom.dcmread(received.name).file_meta.MediaStorageSOPInstanceUID == "1.2.3.4"


def messages_create(sop_class, sop_instance, syntax):
    return pynetdicom.dimse_messages.create_file_meta(
        sop_class_uid=sop_class, sop_instance_uid=sop_instance, transfer_syntax=syntax
    )


def test_a_context_copy_is_a_deepcopy_that_shares_only_the_immutable_uids():
    import copy

    from pynetdicom.presentation import build_context

    from ftlct.agent.dicom.lean_receive import copy_context

    original = build_context(
        "1.2.840.10008.5.1.4.1.1.2", ["1.2.840.10008.1.2", "1.2.840.10008.1.2.1"]
    )
    original.context_id = 7
    copied = copy_context(original)
    assert copied.__dict__ == copy.deepcopy(original).__dict__
    copied.transfer_syntax = ["1.2.840.10008.1.2.4.70"]  # negotiation narrows the copy ...
    copied.context_id = 9
    assert original.transfer_syntax == ["1.2.840.10008.1.2", "1.2.840.10008.1.2.1"]  # ... only
    assert original.context_id == 7


def test_associations_get_their_own_contexts_and_anything_else_is_deep_copied(tmp_path):
    from pynetdicom.presentation import build_context

    undo = enable_lean_receive(tmp_path)
    try:
        copier = pynetdicom.transport.deepcopy
        contexts = [build_context("1.2.840.10008.5.1.4.1.1.2"), build_context("1.2.840.10008.1.1")]
        copied = copier(contexts)
        nested = {"list": [1, [2]]}
        other = copier(nested)
    finally:
        undo()
    assert [c.abstract_syntax for c in copied] == [c.abstract_syntax for c in contexts]
    assert all(a is not b for a, b in zip(copied, contexts, strict=True))
    assert all(
        a._transfer_syntax is not b._transfer_syntax for a, b in zip(copied, contexts, strict=True)
    )
    assert other == nested and other["list"][1] is not nested["list"][1]
