"""A stored instance's pages leave the page cache once it is durable (``storage.release_page_cache``),
and only then; the bytes stay as received."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from ftlct.agent.series.series_index import SeriesIndex
from ftlct.agent.settings import StorageSettings
from ftlct.agent.store.database import Database
from ftlct.agent.store.disk import DiskGuard
from ftlct.agent.store.instance_store import InstanceStore, Outcome
from ftlct.agent.store.layout import DataDir
from ftlct.agent.store.page_cache import sync_and_release
from tests.agent.dicom_files import ct_instance, part10_bytes

FINCORE = shutil.which("fincore")  # util-linux: resident bytes of a file, as the kernel counts


def resident_bytes(path) -> int:
    out = subprocess.run(
        [FINCORE, "--bytes", "--noheadings", "--raw", "--output", "RES", str(path)],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(out.stdout.split()[0])


@pytest.fixture
def dropping_file_system(tmp_path):
    """Skip where released pages stay (tmpfs holds its files in the page cache itself)."""
    if FINCORE is None or not hasattr(os, "posix_fadvise"):
        pytest.skip("needs fincore (util-linux) and posix_fadvise")
    probe = tmp_path / "probe"
    probe.write_bytes(b"x" * 65536)
    sync_and_release(probe)
    if resident_bytes(probe) != 0:
        pytest.skip(f"{tmp_path}'s file system keeps released pages (tmpfs?)")
    probe.unlink()


def open_store(root, **options) -> InstanceStore:
    data_dir = DataDir(root).create()
    db = Database(data_dir.index)
    guard = DiskGuard(lambda: 10**15, min_free_bytes=10**6)
    return InstanceStore(data_dir, db, guard, series=SeriesIndex(db), **options)


def stored_path(store: InstanceStore, data: bytes):
    result = store.put(data)
    assert result.outcome is Outcome.STORED
    return store.path_of({"path": result.instance.path})


def test_a_stored_instance_leaves_the_page_cache_unless_told_to_stay(
    tmp_path, dropping_file_system
):
    released_store = open_store(tmp_path / "released")
    kept_store = open_store(tmp_path / "kept", release_page_cache=False)
    try:
        data = part10_bytes(ct_instance())
        released = stored_path(released_store, data)
        kept = stored_path(kept_store, data)
        assert resident_bytes(kept) > 0  # what the kernel keeps of a file just written
        assert resident_bytes(released) == 0
        assert released.read_bytes() == data == kept.read_bytes()
    finally:
        released_store.db.close()
        kept_store.db.close()


def test_the_setting_reaches_the_store(tmp_path, dropping_file_system):
    data_dir = DataDir(tmp_path / "data").create()
    db = Database(data_dir.index)
    guard = DiskGuard(lambda: 10**15, min_free_bytes=10**6)
    try:
        store = InstanceStore.configured(
            data_dir,
            db,
            guard,
            StorageSettings(data_dir=tmp_path / "data", release_page_cache=False),
            series=SeriesIndex(db),
        )
        assert resident_bytes(stored_path(store, part10_bytes(ct_instance()))) > 0
    finally:
        db.close()


def test_directories_are_synced_without_advice(tmp_path):
    advised = []
    sync_and_release(tmp_path, advise=lambda *args: advised.append(args))
    assert advised == []
    (tmp_path / "f").write_bytes(b"data")
    sync_and_release(tmp_path / "f", advise=lambda *args: advised.append(args))
    assert len(advised) == 1 and advised[0][1:] == (0, 0, os.POSIX_FADV_DONTNEED)


def test_refused_advice_changes_nothing(tmp_path):
    def refuse(*_):
        raise OSError(22, "Invalid argument")

    (tmp_path / "f").write_bytes(b"data")
    sync_and_release(tmp_path / "f", advise=refuse)  # no error: the file is synced and kept
    assert (tmp_path / "f").read_bytes() == b"data"


def test_a_missing_file_still_fails_the_sync(tmp_path):
    with pytest.raises(FileNotFoundError):
        sync_and_release(tmp_path / "gone")
