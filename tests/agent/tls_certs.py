"""A throwaway CA with a server and a client certificate for the agent's DICOM TLS.

Made with the same small PKI the cloud uses for its broker (``ftlct.cloud.pki``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ftlct.cloud.pki import KeyAndCert, issue, make_ca


@dataclass
class TlsFiles:
    ca_cert: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    ct_cert: Path  # a second client of the same CA (CN "ct1")
    ct_key: Path
    stranger_cert: Path  # signed by another CA: must be refused
    stranger_key: Path


def _write(pair: KeyAndCert, folder: Path, stem: str) -> tuple[Path, Path]:
    cert, key = folder / f"{stem}.pem", folder / f"{stem}.key"
    cert.write_bytes(pair.cert_pem())
    key.write_bytes(pair.key_pem())
    return cert, key


def make_tls_files(folder: Path) -> TlsFiles:
    folder.mkdir(parents=True, exist_ok=True)
    ca = make_ca("ftl-ct test CA")
    server_cert, server_key = _write(
        issue(ca, "ftl-agent", ["localhost", "127.0.0.1"]), folder, "server"
    )
    client_cert, client_key = _write(issue(ca, "pacs"), folder, "client")
    ct_cert, ct_key = _write(issue(ca, "ct1"), folder, "ct1")
    stranger_cert, stranger_key = _write(
        issue(make_ca("someone else's CA"), "stranger"), folder, "stranger"
    )
    ca_cert = folder / "ca.pem"
    ca_cert.write_bytes(ca.cert_pem())
    return TlsFiles(
        ca_cert,
        server_cert,
        server_key,
        client_cert,
        client_key,
        ct_cert,
        ct_key,
        stranger_cert,
        stranger_key,
    )
