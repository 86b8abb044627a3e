"""C-STORE SCU: send one stored file to a destination AE (the agent's results)."""

from __future__ import annotations

import ssl
from pathlib import Path

import pydicom
from pynetdicom import AE

from ftlct.agent.destination import Destination


class SendError(RuntimeError):
    """The destination could not be reached or did not accept the instance."""


def send_file(
    path: Path,
    destination: Destination,
    calling_ae: str,
    timeout_s: float = 30.0,
    ssl_context: ssl.SSLContext | None = None,
) -> int:
    """C-STORE ``path`` to ``destination`` (over TLS with ``ssl_context``); returns the success
    status or raises ``SendError``."""
    meta = pydicom.dcmread(path, stop_before_pixels=True).file_meta
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_s
    ae.add_requested_context(meta.MediaStorageSOPClassUID, [meta.TransferSyntaxUID])
    tls_args = (ssl_context, destination.host) if ssl_context is not None else None
    assoc = ae.associate(
        destination.host, destination.port, ae_title=destination.ae_title, tls_args=tls_args
    )
    if not assoc.is_established:
        state = "rejected" if assoc.is_rejected else "aborted or unreachable"
        raise SendError(f"association with {destination} {state}")
    try:
        status = assoc.send_c_store(path)
    except Exception as exc:  # pynetdicom raises on a lost connection mid-send
        raise SendError(f"C-STORE to {destination} failed: {exc}") from exc
    finally:
        if assoc.is_established:
            assoc.release()
    code = getattr(status, "Status", None)
    if code is None:
        raise SendError(f"no C-STORE response from {destination}")
    if code != 0x0000 and not 0xB000 <= code <= 0xBFFF:  # 0xBxxx: warnings, stored
        raise SendError(f"{destination} answered C-STORE with status 0x{code:04X}")
    return int(code)
