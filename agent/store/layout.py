"""Where things live inside the data dir. File names carry hashes of UIDs, never patient data.

DATA_DIR/             0700, and every file in it 0600: it holds patient data
  index.sqlite        instances, series, jobs, results, quarantine, deliveries (WAL)
  embeddings.sqlite   per-slice embeddings keyed by SOP Instance UID + backbone sha256
  incoming/           temp files being written; anything left here was never acknowledged
  instances/SS/SERIES/SOP-CONTENT.dcm   as received (SS: 2 hex of the study, then hashes of
                      the UIDs and of the bytes, so a replacement never overwrites the copy
                      the index still names)
  quarantine/         what could not be stored, with a .json sidecar giving the reason
  reports/            DICOM SR results waiting for (or after) delivery
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from ftlct.agent.logs import log_event

log = logging.getLogger(__name__)

DIR_MODE = 0o700
FILE_MODE = 0o600
# What the agent's processes create is private whatever the caller's umask (sqlite's
# index, -wal and -shm files follow it; explicit modes cover the rest).
PRIVATE_UMASK = 0o077


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
        """Make the tree (0700); a data dir an older version left open to others is closed."""
        existed = self.root.is_dir()
        self.root.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        if existed and stat.S_IMODE(self.root.stat().st_mode) != DIR_MODE:
            changed = restrict_tree(self.root)
            log_event(log, "data_dir_restricted", root=str(self.root), modes_changed=changed)
        for path in (self.incoming, self.instances, self.quarantine, self.reports):
            path.mkdir(mode=DIR_MODE, exist_ok=True)
        return self

    def instance_relpath(self, study_uid: str, series_uid: str, sop_uid: str, sha256: str) -> str:
        study = uid_key(study_uid)
        name = f"{uid_key(sop_uid, 32)}-{sha256[:16]}"
        return f"instances/{study[:2]}/{uid_key(series_uid)}/{name}.dcm"

    def resolve(self, relpath: str) -> Path:
        """Absolute path of a file the index names; refuses anything outside the data dir."""
        path = (self.root / relpath).resolve()
        if not path.is_relative_to(self.root.resolve()):
            raise ValueError(f"{relpath!r} points outside the data dir")
        return path


def restrict_tree(root: Path) -> int:
    """chmod the tree to 0700 directories and 0600 files; returns how many modes changed.

    Files with other hard links are left alone: an installed model's backbone is a link
    to the operator's ``--model`` file (public weights), whose mode is not ours to change.
    """
    changed = 0
    for path in [root, *root.rglob("*")]:
        try:
            info = path.lstat()
        except FileNotFoundError:
            continue
        if stat.S_ISLNK(info.st_mode) or (stat.S_ISREG(info.st_mode) and info.st_nlink > 1):
            continue
        wanted = DIR_MODE if stat.S_ISDIR(info.st_mode) else FILE_MODE
        if stat.S_IMODE(info.st_mode) != wanted:
            os.chmod(path, wanted)
            changed += 1
    return changed
