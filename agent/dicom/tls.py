"""The server-side TLS context for the DICOM listener."""

from __future__ import annotations

import ssl

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
