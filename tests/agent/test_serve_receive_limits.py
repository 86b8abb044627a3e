"""Receiving large and hostile C-STOREs: to disk in pieces, within a size cap, in bounded memory.

Each test runs ``ftl-agent serve`` as a subprocess and sends with dcmtk's
storescu or pynetdicom. Memory is measured as the agent's peak resident set
(``VmHWM``): a bound on bytes, not on time.
"""

from __future__ import annotations

import socket
import struct
import subprocess
import threading
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage

from tests.agent.dicom_files import CT_SMALL, ct_instance
from tests.support.dicom_peers import STORESCU, running_agent, storescu, wait_for
from tests.support.paths import require_program
from tests.support.ports import LOOPBACK

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

MiB = 2**20
# No inference during these tests: what is measured is the receive path alone.
QUIET = {"FTLCT_AGENT_INFERENCE_EAGER": "false", "FTLCT_AGENT_SERIES_QUIET_PERIOD_S": "600"}


def big_ct(path, megabytes: int, series_uid: str | None = None):
    """A CT instance of ``megabytes`` MiB of 16-bit pixels (4096 columns), as a file."""
    ds = ct_instance(series_uid=series_uid)
    ds.Columns = 4096
    ds.Rows = megabytes * MiB // (4096 * 2)
    ds.PixelData = bytes(ds.Rows * ds.Columns * 2)
    ds.save_as(path, enforce_file_format=True)
    return path


def _proc_status_bytes(pid: int, key: str) -> int:
    text = Path(f"/proc/{pid}/status").read_text()
    for line in text.splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {key} in /proc/{pid}/status")


def peak_rss_bytes(pid: int) -> int:
    """The process's high-water resident set (``VmHWM``), in bytes."""
    return _proc_status_bytes(pid, "VmHWM")


def current_rss_bytes(pid: int) -> int:
    return _proc_status_bytes(pid, "VmRSS")


@pytest.mark.slow
def test_ten_associations_of_huge_datasets_stay_far_below_their_size_in_memory(
    tmp_path, model_path
):
    require_program(STORESCU)
    size_mb, senders = 64, 10
    series = generate_uid()
    files = [big_ct(tmp_path / f"big{k}.dcm", size_mb, series) for k in range(senders)]
    total = sum(f.stat().st_size for f in files)
    # room for the port probe's connection that pynetdicom may still count
    env = {**QUIET, "FTLCT_AGENT_DICOM_MAX_ASSOCIATIONS": str(senders + 2)}
    with running_agent(tmp_path / "run", model_path, env=env) as agent:
        baseline = current_rss_bytes(agent.process.pid)
        commands = [
            [STORESCU, "-aec", agent.ae_title, LOOPBACK, str(agent.port), str(f)] for f in files
        ]
        # all ten at once: each association carries one 64 MiB dataset
        procs = [
            subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for c in commands
        ]
        outputs = [p.communicate(timeout=600)[0] for p in procs]
        assert [p.returncode for p in procs] == [0] * senders, [o[-300:] for o in outputs]
        assert len(agent.stored_sop_uids()) == senders
        peak = peak_rss_bytes(agent.process.pid)
        growth = peak - baseline
        print(
            f"\n{senders} x {size_mb} MiB at once ({total / MiB:.0f} MiB): agent RSS "
            f"{baseline / MiB:.0f} MiB before, peak {peak / MiB:.0f} MiB "
            f"(+{growth / MiB:.0f} MiB)"
        )
        # Whole datasets in memory would add at least the sum of the datasets.
        assert growth < total / 8
        stored = sorted((agent.data_dir / "instances").rglob("*.dcm"))
        assert len(stored) == senders
        assert all(p.stat().st_size > size_mb * MiB for p in stored)
        assert not list((agent.data_dir / "incoming").iterdir())


def test_a_dataset_over_the_size_cap_is_aborted_while_it_arrives(tmp_path, model_path):
    big = big_ct(tmp_path / "big.dcm", 48)
    env = {**QUIET, "FTLCT_AGENT_DICOM_MAX_DATASET_BYTES": "8MiB"}
    with running_agent(tmp_path / "run", model_path, env=env) as agent:
        refused = storescu("-aec", agent.ae_title, LOOPBACK, str(agent.port), str(big))
        assert refused.returncode != 0
        assert agent.stored_sop_uids() == set()
        wait_for(lambda: "dataset_aborted" in agent.log(), timeout=30)
        line = next(x for x in agent.log().splitlines() if "dataset_aborted" in x)
        assert "max_dataset_bytes" in line
        received = int(line.split("received_bytes=")[1].split()[0])
        assert 8 * MiB < received < 9 * MiB  # refused one PDU past the cap, not at the end
        assert wait_for(lambda: not list((agent.data_dir / "incoming").iterdir()), timeout=30)
        status = agent.status()
        assert status["quarantined"] == 1 and status["quarantine"]["bytes"] == 0
        # the node goes on storing what fits
        ok = storescu("-aec", agent.ae_title, LOOPBACK, str(agent.port), str(CT_SMALL))
        assert ok.returncode == 0, ok.stderr
        assert len(agent.stored_sop_uids()) == 1
        assert agent.alive()


def test_a_pdu_declaring_more_than_the_bound_is_refused_before_its_body_is_read(
    tmp_path, model_path
):
    with running_agent(tmp_path / "run", model_path, env=QUIET) as agent:
        ae = AE(ae_title="HOSTILE")
        ae.add_requested_context(CTImageStorage)
        assoc = ae.associate(LOOPBACK, agent.port, ae_title=agent.ae_title)
        assert assoc.is_established
        raw: socket.socket = assoc.dul.socket.socket
        # a P-DATA-TF PDU announcing 2 GiB, then its "body" in 1 MiB pieces
        raw.sendall(struct.pack(">BBL", 0x04, 0, 2**31))
        sent, chunk = 0, bytes(MiB)
        with pytest.raises(OSError):
            while sent < 512 * MiB:
                raw.sendall(chunk)
                sent += len(chunk)
        print(f"\nthe agent closed the connection after {sent / MiB:.0f} MiB of a 2 GiB PDU")
        assert sent < 64 * MiB  # what the socket buffers held, not the PDU
        wait_for(lambda: "pdu_refused" in agent.log(), timeout=30)
        assert peak_rss_bytes(agent.process.pid) < 2**31
        assoc.abort()
        assert agent.alive()
        ok = storescu("-aec", agent.ae_title, LOOPBACK, str(agent.port), str(CT_SMALL))
        assert ok.returncode == 0, ok.stderr


def test_many_small_instances_over_concurrent_associations_are_all_stored(tmp_path, model_path):
    """Chunked receive keeps the ordinary path whole: every instance of 5 parallel
    associations is stored exactly as sent."""
    folder = tmp_path / "series"
    folder.mkdir()
    paths = []
    for k in range(40):
        ds = ct_instance(instance_number=k + 1)
        path = folder / f"{k}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    with running_agent(tmp_path / "run", model_path, env=QUIET) as agent:
        errors = []

        def send(part):
            result = storescu("-aec", agent.ae_title, LOOPBACK, str(agent.port), *map(str, part))
            if result.returncode != 0:
                errors.append(result.stderr)

        threads = [threading.Thread(target=send, args=(paths[k::5],)) for k in range(5)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=300)
        assert errors == []
        expected = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in paths}
        assert agent.stored_sop_uids() == expected
        assert not list((agent.data_dir / "incoming").iterdir())
