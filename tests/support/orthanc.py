"""A real Orthanc (Debian package) on free loopback ports, with a throwaway storage, for tests.

    with running_orthanc(tmp_path, modalities={"agent": ("FTLCT", "127.0.0.1", 11112)}) as pacs:
        study = pacs.upload(Path("slice.dcm"))["ParentStudy"]
        pacs.post("/modalities/agent/store", {"Resources": [study], "Synchronous": True})

The REST API answers on loopback only (``RemoteAccessAllowed`` false), without
authentication; no plugins are loaded. Orthanc runs in its own process group
and is killed on exit; its log is ``pacs.log()``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.support.paths import require_program
from tests.support.ports import LOOPBACK, free_port, wait_for_port

ORTHANC = "/usr/sbin/Orthanc"


@dataclass
class Orthanc:
    process: subprocess.Popen
    http_port: int
    dicom_port: int
    ae_title: str
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.http_port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        content_type: str = "application/json",
        timeout: float = 120,
    ):
        req = urllib.request.Request(self.url + path, data=body, method=method)
        if body is not None:
            req.add_header("Content-Type", content_type)
        with urllib.request.urlopen(req, timeout=timeout) as response:
            data = response.read()
        return json.loads(data) if data and data[:1] in (b"{", b"[") else data

    def get(self, path: str):
        return self.request("GET", path)

    def post(self, path: str, payload) -> object:
        return self.request("POST", path, json.dumps(payload).encode())

    def upload(self, dicom_file: Path) -> dict:
        """``POST /instances``: store a DICOM file; returns Orthanc's answer (ID, ParentStudy...)."""
        return self.request("POST", "/instances", dicom_file.read_bytes(), "application/dicom")

    def find(self, level: str, query: dict) -> list[dict]:
        return self.post("/tools/find", {"Level": level, "Query": query, "Expand": True})

    def stop(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)


def orthanc_config(
    workdir: Path,
    http_port: int,
    dicom_port: int,
    ae_title: str,
    modalities: dict[str, tuple[str, str, int]],
) -> dict:
    return {
        "Name": "ftlct-test-pacs",
        "StorageDirectory": str(workdir / "storage"),
        "IndexDirectory": str(workdir / "index"),
        "HttpServerEnabled": True,
        "HttpPort": http_port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomServerEnabled": True,
        "DicomAet": ae_title,
        "DicomPort": dicom_port,
        "DicomCheckCalledAet": False,
        "DicomAlwaysAllowStore": True,
        "DicomModalities": {name: list(entry) for name, entry in modalities.items()},
        "Plugins": [],
        "SaveJobs": False,
        "StorageCompression": False,
    }


@contextlib.contextmanager
def running_orthanc(
    workdir: Path,
    modalities: dict[str, tuple[str, str, int]],
    ae_title: str = "ORTHANC",
    extra: dict | None = None,
) -> Iterator[Orthanc]:
    """Orthanc with ``orthanc_config``; ``extra`` keys (e.g. "LuaScripts") are added or win."""
    program = require_program(ORTHANC)
    workdir.mkdir(parents=True, exist_ok=True)
    http_port, dicom_port = free_port(), free_port()
    while dicom_port == http_port:
        dicom_port = free_port()
    config = workdir / "orthanc.json"
    settings = orthanc_config(workdir, http_port, dicom_port, ae_title, modalities)
    config.write_text(json.dumps({**settings, **(extra or {})}, indent=2))
    log_path = workdir / "orthanc.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [program, str(config)], cwd=workdir, stdout=log, stderr=log, start_new_session=True
        )
    pacs = Orthanc(process, http_port, dicom_port, ae_title, log_path)
    try:
        wait_for_port(http_port, proc=process, timeout=60)
        wait_for_port(dicom_port, proc=process, timeout=60)
        yield pacs
    finally:
        pacs.stop()
