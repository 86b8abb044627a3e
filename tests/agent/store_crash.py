"""A process that replaces a stored instance and SIGKILLs itself at one step of it.

    run_crashing_replacement(data_dir, new_file, "before_commit")

runs ``python -m tests.agent.store_crash DATA_DIR NEW_FILE POINT``: it opens the
store (policy ``replace``), wraps the file-system call at POINT so that the
process dies there (no chance to clean up, as with a power cut), and stores
NEW_FILE, whose SOP Instance UID is already stored.
"""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
from pathlib import Path

from tests.support.paths import REPO

CRASH_POINTS = ("before_rename", "before_commit", "after_commit", "after_old_removed")


def run_crashing_replacement(data_dir: Path, new_file: Path, point: str):
    return subprocess.run(
        [sys.executable, "-m", "tests.agent.store_crash", str(data_dir), str(new_file), point],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _install(point: str) -> None:
    real_replace, real_unlink = os.replace, pathlib.Path.unlink

    def replace(src, dst):
        if point == "before_rename":
            _die()
        real_replace(src, dst)
        if point == "before_commit":  # renamed into place, index not committed
            _die()

    def unlink(self, missing_ok=False):
        if "instances" in self.parts and point == "after_commit":
            _die()  # the index names the new copy; the old one is still there
        real_unlink(self, missing_ok=missing_ok)
        if "instances" in self.parts and point == "after_old_removed":
            _die()

    os.replace = replace
    pathlib.Path.unlink = unlink


def main(data_dir: str, new_file: str, point: str) -> None:
    from ftlct.agent.series.series_index import SeriesIndex
    from ftlct.agent.store.database import Database
    from ftlct.agent.store.disk import DiskGuard
    from ftlct.agent.store.instance_store import InstanceStore
    from ftlct.agent.store.layout import DataDir

    layout = DataDir(Path(data_dir)).create()
    db = Database(layout.index)
    guard = DiskGuard(lambda: 10**15, 0)
    store = InstanceStore(layout, db, guard, series=SeriesIndex(db), on_conflict="replace")
    data = Path(new_file).read_bytes()
    _install(point)
    store.put(data)
    sys.exit(f"the replacement finished without reaching {point}")


if __name__ == "__main__":
    main(*sys.argv[1:])
