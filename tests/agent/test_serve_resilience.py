"""Crashes and stops: nothing acknowledged is lost, and unfinished work resumes after restart."""

from __future__ import annotations

import signal
import threading

import pydicom

from tests.support.dicom_peers import running_agent, send_with_pynetdicom, storescu, wait_for
from tests.support.ports import LOOPBACK


def dataset_bytes(path) -> bytes:
    """The file's bytes after its file meta: what a C-STORE carries and the agent keeps."""
    data = path.read_bytes()
    meta_length = pydicom.dcmread(
        path, stop_before_pixels=True
    ).file_meta.FileMetaInformationGroupLength
    return data[132 + 12 + meta_length :]


class Sender(threading.Thread):
    """Sends files in the background and records which ones the agent acknowledged."""

    def __init__(self, files, port):
        super().__init__(daemon=True)
        self.files = files
        self.port = port
        self.acknowledged = []
        self.error = None
        self.acked = threading.Condition()

    def on_status(self, path, status):
        if status == 0x0000:
            with self.acked:
                self.acknowledged.append(path)
                self.acked.notify_all()

    def wait_acknowledged(self, count, timeout=120):
        with self.acked:
            assert self.acked.wait_for(lambda: len(self.acknowledged) >= count, timeout=timeout)

    def run(self):
        try:
            send_with_pynetdicom(self.files, self.port, on_status=self.on_status)
        except Exception as exc:  # the agent dies under us: expected in the kill test
            self.error = exc


def test_sigkill_mid_series_loses_nothing_acknowledged_and_the_series_gets_its_result(
    tmp_path, model_path, cq500
):
    files = sorted(cq500.glob("*.dcm"))[1:81]  # 80 slices of the JPEG Lossless series
    with running_agent(
        tmp_path, model_path, env={"FTLCT_AGENT_SERIES_QUIET_PERIOD_S": "2"}
    ) as agent:
        sender = Sender(files, agent.port)
        sender.start()
        sender.wait_acknowledged(25)
        agent.kill()  # SIGKILL: no chance to flush anything
        sender.join(timeout=60)
        acknowledged = list(sender.acknowledged)
        assert 25 <= len(acknowledged) < len(files)

        agent.restart()
        stored = agent.stored_sop_uids()
        for path in acknowledged:
            uid = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
            assert uid in stored
        # and the bytes on disk are the ones that were sent
        index = agent._db()
        try:
            for path in acknowledged[:5] + acknowledged[-5:]:
                uid = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
                relpath = index.scalar(
                    "SELECT path FROM instances WHERE sop_instance_uid = ?", (uid,)
                )
                assert (agent.data_dir / relpath).read_bytes().endswith(dataset_bytes(path))
        finally:
            index.close()
        assert not list((agent.data_dir / "incoming").iterdir())

        (result,) = wait_for(agent.results, timeout=120)
        assert result["n_instances"] == len(stored) >= len(acknowledged)
        assert result["n_slices"] == len(stored)


def test_sigterm_finishes_the_open_association_and_resumes_the_series_after_restart(
    tmp_path, model_path, cq500
):
    files = sorted(cq500.glob("*.dcm"))[1:41]
    env = {"FTLCT_AGENT_SERIES_QUIET_PERIOD_S": "3"}
    with running_agent(tmp_path, model_path, env=env) as agent:
        sender = Sender(files, agent.port)
        sender.start()
        sender.wait_acknowledged(5)
        agent.process.send_signal(signal.SIGTERM)  # mid-association
        assert agent.process.wait(timeout=60) == 0
        sender.join(timeout=60)
        # in-flight stores were finished (or refused), never half-done
        assert "agent_stopped" in agent.log()
        assert agent.results() == []  # stopped before the quiet period ended
        refused = storescu("-aec", "FTLCT", LOOPBACK, str(agent.port), str(files[0]))
        assert refused.returncode != 0  # nobody listens any more

        agent.restart()
        stored = agent.stored_sop_uids()
        acknowledged = {
            str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID)
            for p in sender.acknowledged
        }
        assert acknowledged <= stored
        (result,) = wait_for(agent.results, timeout=120)
        assert result["n_instances"] == len(stored)
