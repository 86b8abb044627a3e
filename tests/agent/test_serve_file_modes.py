"""The data dir holds patient data: 0700, and every file in it 0600, whoever created it.

Real ``ftl-agent serve`` and ``ftl-agent identity`` processes, run under the
permissive umask 022, write instances, quarantine, SR reports, embeddings, the
index (with SQLite's -wal and -shm) and keys; the test walks the tree.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.agent.dicom_files import garbage_part10, write_series
from tests.agent.file_modes import modes, not_private
from tests.support.dicom_peers import running_agent, send_with_pynetdicom, storescu, wait_for
from tests.support.paths import REPO, require_program
from tests.support.ports import LOOPBACK, free_port, wait_for_port

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture
def open_umask():
    before = os.umask(0o022)  # what a shell usually has: files 0644, directories 0755
    yield
    os.umask(before)


def test_every_file_the_agent_writes_is_private(tmp_path, model_path, open_umask):
    storescp = require_program("/usr/bin/storescp")
    data_dir = tmp_path / "agent-data"
    identity = subprocess.run(
        [
            sys.executable,
            "-m",
            "ftlct.agent",
            "identity",
            "--data-dir",
            str(data_dir),
            "--site",
            "a",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert identity.returncode == 0, identity.stderr
    received = tmp_path / "pacs"
    received.mkdir()
    pacs_port = free_port()
    pacs = subprocess.Popen(
        [storescp, "-aet", "PACS", "-od", str(received), str(pacs_port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "TCP_NODELAY": "1"},
    )
    try:
        wait_for_port(pacs_port, proc=pacs)
        series = write_series(tmp_path / "series", 3)
        junk = tmp_path / "junk.dcm"
        junk.write_bytes(garbage_part10(b"\x01\x02" * 300))
        with running_agent(
            tmp_path,
            model_path,
            "--result-destination",
            f"PACS@{LOOPBACK}:{pacs_port}",
            data_dir=data_dir,
        ) as agent:
            sent = storescu("-aec", agent.ae_title, LOOPBACK, str(agent.port), *map(str, series))
            assert sent.returncode == 0, sent.stderr
            assert send_with_pynetdicom([junk], agent.port) == {junk: 0xC000}
            wait_for(lambda: agent.status()["deliveries"]["sent"] == 1, timeout=120)
            # while serving: the index's -wal and -shm exist too
            names = set(modes(data_dir))
            for expected in (
                "index.sqlite",
                "index.sqlite-wal",
                "index.sqlite-shm",
                "embeddings.sqlite",
                "keys/a.ed25519",
                "keys/a.ed25519.pub",
            ):
                assert expected in names
            for folder in ("instances", "quarantine", "reports"):
                assert any(n.startswith(f"{folder}/") and n.endswith(".dcm") for n in names)
            assert not_private(data_dir) == {}
        assert not_private(data_dir) == {}
    finally:
        pacs.terminate()
        pacs.wait(timeout=10)


def test_a_data_dir_an_older_version_left_open_is_closed_at_start(tmp_path, model_path, open_umask):
    data_dir = tmp_path / "agent-data"
    (data_dir / "reports").mkdir(parents=True)
    old = data_dir / "reports" / "old.dcm"  # an SR an older version wrote 0644
    old.write_bytes(b"x")
    os.chmod(data_dir, 0o755)
    os.chmod(old, 0o644)
    with running_agent(tmp_path, model_path, data_dir=data_dir):
        assert not_private(data_dir) == {}
        assert old.read_bytes() == b"x"
