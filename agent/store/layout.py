"""Where things live inside the data dir. File names carry hashes of UIDs, never patient data.

DATA_DIR/
  index.sqlite        instances, series, jobs, results, quarantine, deliveries (WAL)
  embeddings.sqlite   per-slice embeddings keyed by SOP Instance UID + backbone sha256
  incoming/           temp files being written; anything left here was never acknowledged
  instances/SS/SERIES/SOP.dcm   as received (SS: 2 hex of the study, then hashes of the UIDs)
  quarantine/         what could not be stored, with a .json sidecar giving the reason
  reports/            DICOM SR results waiting for (or after) delivery
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path


def uid_key(uid: str, length: int = 24) -> str:
    """A fixed-length, path-safe name for a UID (UIDs from a peer may hold any character)."""
    return hashlib.sha256(uid.encode("utf-8", "surrogateescape")).hexdigest()[:length]


@dataclass(frozen=True)
class DataDir:
    root: Path

    @property
    def index(self) -> Path:
        return self.root / "index.sqlite"

    @property
    def embeddings(self) -> Path:
        return self.root / "embeddings.sqlite"

    @property
    def incoming(self) -> Path:
        return self.root / "incoming"

    @property
    def instances(self) -> Path:
        return self.root / "instances"

    @property
    def quarantine(self) -> Path:
        return self.root / "quarantine"

    @property
    def reports(self) -> Path:
        return self.root / "reports"

    def create(self) -> DataDir:
        for path in (self.root, self.incoming, self.instances, self.quarantine, self.reports):
            path.mkdir(parents=True, exist_ok=True)
        return self

    def instance_relpath(self, study_uid: str, series_uid: str, sop_uid: str) -> str:
        study = uid_key(study_uid)
        return f"instances/{study[:2]}/{uid_key(series_uid)}/{uid_key(sop_uid, 32)}.dcm"

    def resolve(self, relpath: str) -> Path:
        """Absolute path of a file the index names; refuses anything outside the data dir."""
        path = (self.root / relpath).resolve()
        if not path.is_relative_to(self.root.resolve()):
            raise ValueError(f"{relpath!r} points outside the data dir")
        return path
