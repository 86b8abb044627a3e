"""Every file of pydicom's own test corpus, sent to a running agent: it answers each and stays up.

Files with file meta go as they are on disk (pynetdicom sends the stored bytes);
datasets without file meta are encoded by pynetdicom; anything that is not DICOM
at all is wrapped as the dataset of a Secondary Capture C-STORE, so the agent
sees every byte stream of the corpus. Only the files present in the installed
wheel are used (never pydicom's downloadable extra data).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE

from ftlct.agent.dicom.contexts import STORAGE_SOP_CLASSES, TRANSFER_SYNTAXES
from tests.agent.dicom_files import PYDICOM_TEST_FILES, garbage_part10
from tests.support.dicom_peers import echoscu, raw_file_sending, running_agent, wait_for
from tests.support.ports import LOOPBACK

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

SUCCESS = {0x0000}
FAILURES = {0xA700, 0xA900, 0xC000}


def corpus_files() -> list[Path]:
    return sorted(p for p in PYDICOM_TEST_FILES.rglob("*") if p.is_file())


def how_to_send(path: Path, scratch: Path):
    """(kind, payload, sop class, transfer syntax): a path to send as-is, or a Dataset."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        meta = ds.file_meta
        if "MediaStorageSOPClassUID" in meta and "TransferSyntaxUID" in meta:
            return "file", path, meta.MediaStorageSOPClassUID, meta.TransferSyntaxUID
    except Exception:
        pass
    try:
        ds = pydicom.dcmread(path, force=True)
        if "SOPClassUID" in ds and "SOPInstanceUID" in ds:
            implicit, little = ds.original_encoding
            syntax = (
                ImplicitVRLittleEndian
                if implicit
                else ExplicitVRLittleEndian
                if little
                else ExplicitVRBigEndian
            )
            ds.file_meta = FileMetaDataset()
            ds.file_meta.TransferSyntaxUID = syntax
            return "dataset", ds, ds.SOPClassUID, syntax
    except Exception:
        pass
    wrapped = scratch / (path.name + ".wrapped.dcm")
    wrapped.write_bytes(garbage_part10(path.read_bytes(), "1.2.840.10008.5.1.4.1.1.7"))
    return "wrapped", wrapped, "1.2.840.10008.5.1.4.1.1.7", ExplicitVRLittleEndian


def send_all(port: int, items: list[tuple]) -> dict[str, object]:
    """C-STORE every ``(name, kind, payload, sop class, syntax)`` over as few associations as
    the 128-context limit allows; the answer per name is a status, or "context rejected" when
    the agent does not store that SOP class / syntax."""
    answers: dict[str, object] = {}
    contexts = sorted({(item[3], item[4]) for item in items})
    for first in range(0, len(contexts), 100):
        chunk = set(contexts[first : first + 100])
        ae = AE(ae_title="CORPUS")
        for sop_class, syntax in chunk:
            ae.add_requested_context(sop_class, [syntax])
        assoc = ae.associate(LOOPBACK, port, ae_title="FTLCT")
        assert assoc.is_established, "the agent refused the association"
        accepted = {(c.abstract_syntax, c.transfer_syntax[0]) for c in assoc.accepted_contexts}
        try:
            for name, _kind, payload, sop_class, syntax in items:
                if (sop_class, syntax) not in chunk:
                    continue
                if (sop_class, syntax) not in accepted:
                    answers[name] = "context rejected"
                    continue
                with raw_file_sending():
                    status = assoc.send_c_store(payload)
                answers[name] = int(status.Status) if status and "Status" in status else None
        finally:
            if assoc.is_established:
                assoc.release()
    return answers


def test_every_corpus_file_gets_an_answer_and_the_agent_stays_up(tmp_path, model_path):
    files = corpus_files()
    assert len(files) > 50
    answers = {}
    started = time.monotonic()
    with (
        running_agent(
            tmp_path, model_path, env={"FTLCT_AGENT_SERIES_QUIET_PERIOD_S": "1"}
        ) as agent,
        tempfile.TemporaryDirectory(dir=tmp_path) as scratch,
    ):
        items = []
        for path in files:
            name = path.relative_to(PYDICOM_TEST_FILES).as_posix()
            items.append((name, *how_to_send(path, Path(scratch))))
        kinds = {item[0]: (item[1], item[3]) for item in items}
        answers = {
            name: (*kinds[name], answer) for name, answer in send_all(agent.port, items).items()
        }
        assert agent.alive(), agent.log()[-3000:]
        sent_at = time.monotonic()

        assert len(answers) == len(files)
        unanswered = {n: a for n, a in answers.items() if a[2] is None}
        assert unanswered == {}
        for name, (_kind, sop_class, answer) in answers.items():
            if answer == "context rejected":  # e.g. a DICOMDIR: not a storage SOP class
                item = next(i for i in items if i[0] == name)
                assert sop_class not in STORAGE_SOP_CLASSES or item[4] not in TRANSFER_SYNTAXES
            else:
                assert answer in SUCCESS | FAILURES, f"{name}: 0x{answer:04X}"
        successes = [n for n, a in answers.items() if a[2] in SUCCESS]
        failures = [n for n, a in answers.items() if a[2] in FAILURES]
        wrapped = [n for n, a in answers.items() if a[0] == "wrapped"]
        assert len(successes) > 40
        assert set(wrapped) <= set(failures)  # non-DICOM bytes are never "stored"

        status = agent.status()
        # files of the corpus that share a SOP Instance UID with other bytes are conflicts:
        # acknowledged (the first copy stays), their bytes kept in quarantine
        assert status["quarantined"] == len(failures) + status["quarantine"]["conflicts"]
        assert 0 < status["instances_stored"] <= len(successes)

        # the pipeline digests the lot: every series ends inferred or skipped, none crashed it
        wait_for(
            lambda: (
                agent.status()["queues"]["inference"] == 0 and agent.status()["series"]["open"] == 0
            ),
            timeout=240,
            interval=1,
        )
        series = agent.status()["series"]
        assert series["failed"] == 0
        assert series["inferred"] > 10
        assert echoscu("-aec", "FTLCT", LOOPBACK, str(agent.port)).returncode == 0
        print(
            f"\ncorpus sent in {sent_at - started:.1f} s, digested {time.monotonic() - sent_at:.1f} s later"
        )
        print(
            f"corpus: {len(files)} files, {len(successes)} stored, {len(failures)} refused "
            f"(quarantined), {len(answers) - len(successes) - len(failures)} context rejected; "
            f"series {series}"
        )
