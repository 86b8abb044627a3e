"""TLS for DICOM: the listener's context, calling AE titles bound to client certificates,
and the client context for sending results to the PACS."""

from __future__ import annotations

import hashlib
import hmac
import ssl
from pathlib import Path

from ftlct.agent.settings import TlsSettings


def server_ssl_context(settings: TlsSettings) -> ssl.SSLContext | None:
    """TLS 1.2+ with our certificate; client certificates required when configured."""
    if not settings.enabled:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(settings.cert), str(settings.key))
    if settings.ca is not None:
        context.load_verify_locations(cafile=str(settings.ca))
        context.verify_mode = (
            ssl.CERT_REQUIRED if settings.require_client_cert else ssl.CERT_OPTIONAL
        )
    return context


def peer_ssl_socket(assoc) -> ssl.SSLSocket | None:
    """The TLS socket under a pynetdicom association (None on plain TCP)."""
    sock = getattr(getattr(assoc.dul, "socket", None), "socket", None)
    return sock if isinstance(sock, ssl.SSLSocket) else None


def certificate_matches(sock: ssl.SSLSocket, wanted: str) -> bool:
    """Does the peer's verified certificate match ``"CN=name"`` or ``"sha256:HEX"``?"""
    if wanted.startswith("sha256:"):
        der = sock.getpeercert(binary_form=True)
        if not der:
            return False
        return hmac.compare_digest(hashlib.sha256(der).hexdigest(), wanted[7:].lower())
    if wanted.startswith("CN="):
        subject = (sock.getpeercert() or {}).get("subject", ())
        names = [value for rdn in subject for key, value in rdn if key == "commonName"]
        return names == [wanted[3:]]
    return False


def client_ssl_context(ca: Path, cert: Path | None, key: Path | None) -> ssl.SSLContext:
    """TLS 1.2+ to a DICOM peer whose certificate chains to ``ca`` (host name checked),
    with our certificate when given."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert is not None:
        context.load_cert_chain(str(cert), str(key) if key is not None else None)
    return context
