"""Results back to the hospital: the SR's content, deliveries that retry and never crash, and
TLS to the PACS when configured (a real dcmtk storescp +tls)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import time

import pydicom
import pytest

from ftlct.agent.destination import Destination, parse_destination
from ftlct.agent.events import RESULT_DELIVERED, EventBus
from ftlct.agent.inference.results import ResultStore, SeriesResult
from ftlct.agent.metrics import AgentMetrics
from ftlct.agent.reporting.delivery import DeliveryQueue
from ftlct.agent.reporting.sr import build_result_sr
from ftlct.agent.series.series_index import SeriesIndex
from ftlct.agent.settings import ResultsSettings
from ftlct.agent.store.database import Database
from ftlct.agent.store.disk import DiskGuard
from ftlct.agent.store.instance_store import InstanceStore
from ftlct.agent.store.layout import DataDir
from tests.agent.dicom_files import ct_instance, part10_bytes
from tests.agent.tls_certs import make_tls_files
from tests.support.dicom_peers import wait_for
from tests.support.paths import require_program
from tests.support.ports import LOOPBACK, free_port, wait_for_port

SERIES = "1.2.826.0.1.3680043.8.498.11"
STUDY = "1.2.826.0.1.3680043.8.498.12"


def a_result(key_instances, result_id=1) -> SeriesResult:
    return SeriesResult(
        series_uid=SERIES,
        study_uid=STUDY,
        generation=1,
        n_instances=len(key_instances),
        n_slices=len(key_instances),
        n_skipped=0,
        label="abnormal",
        probabilities={"normal": 0.2, "abnormal": 0.8},
        key_instances=key_instances,
        aggregation="top_k_mean(k=5, negative=normal)",
        model_version="7-fed-round-3",
        backbone_sha256="ab" * 32,
        latency_s=5.5,
        inference_s=0.5,
        created_at=time.time(),
        id=result_id,
    )


def content_items(ds):
    for item in ds.get("ContentSequence", []):
        yield item
        yield from content_items(item)


def test_sr_states_finding_probability_version_and_references_the_series():
    headers = [ct_instance(SERIES, STUDY, instance_number=n) for n in range(3)]
    result = a_result([str(headers[1].SOPInstanceUID)])
    sr = build_result_sr(result, headers)
    assert sr.Modality == "SR"
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.33"  # Comprehensive SR
    assert sr.StudyInstanceUID == STUDY  # same study: it files beside the images
    assert sr.SeriesInstanceUID != SERIES
    assert sr.PatientName == headers[0].PatientName  # stays in the hospital: correct practice
    items = list(content_items(sr))
    codes = [i.ConceptCodeSequence[0].CodeMeaning for i in items if i.ValueType == "CODE"]
    assert "abnormal" in codes
    numbers = [
        float(i.MeasuredValueSequence[0].NumericValue) for i in items if i.ValueType == "NUM"
    ]
    assert 0.8 in numbers and 0.2 in numbers
    texts = {
        i.ConceptNameCodeSequence[0].CodeMeaning: i.TextValue
        for i in items
        if i.ValueType == "TEXT"
    }
    assert texts["Algorithm Version"] == "7-fed-round-3"
    assert [i.UID for i in items if i.ValueType == "UIDREF"] == [SERIES]
    images = [
        i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for i in items if i.ValueType == "IMAGE"
    ]
    assert images == [headers[1].SOPInstanceUID]
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert evidence.SeriesInstanceUID == SERIES
    assert len(evidence.ReferencedSOPSequence) == 3


def test_sr_copes_with_sources_lacking_patient_attributes():
    header = ct_instance(SERIES, STUDY)
    for keyword in ("PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID"):
        if keyword in header:
            delattr(header, keyword)
    sr = build_result_sr(a_result([]), [header])
    assert sr.PatientID == header.PatientID


def test_destination_parsing():
    assert parse_destination("PACS@10.0.0.5:104") == Destination("PACS", "10.0.0.5", 104)
    assert parse_destination("PACS@[::1]:11112").host == "::1"
    for bad in ("PACS", "PACS@host", "@h:1", "PACS@h:x", "PACS@h:0", "A" * 17 + "@h:1"):
        with pytest.raises(ValueError):
            parse_destination(bad)


class Pipeline:
    def __init__(self, root, destination, max_attempts=3, **tls):
        self.now = 2_000_000.0
        clock = lambda: self.now  # noqa: E731
        self.data_dir = DataDir(root).create()
        self.db = Database(self.data_dir.index)
        self.store = InstanceStore(
            self.data_dir, self.db, DiskGuard(lambda: 10**15, 0), clock, series=SeriesIndex(self.db)
        )
        self.events = EventBus()
        self.delivered = []
        self.events.subscribe(RESULT_DELIVERED, self.delivered.append)
        settings = ResultsSettings(
            destination=str(destination),
            retry_initial_s=5,
            retry_max_s=60,
            max_attempts=max_attempts,
            **tls,
        )
        self.queue = DeliveryQueue(
            self.db, self.store, destination, settings, "FTLCT", self.events, AgentMetrics(), clock
        )

    def add_result(self) -> SeriesResult:
        uids = []
        for n in range(2):
            ds = ct_instance(SERIES, STUDY, instance_number=n)
            self.store.put(part10_bytes(ds))
            uids.append(str(ds.SOPInstanceUID))
        results = ResultStore(self.db)
        with self.db.transaction() as conn:
            result = results.insert(conn, a_result(uids, result_id=None))
            self.queue.result_hook(conn, result)
        return result

    def delivery(self) -> dict:
        return dict(self.db.query_one("SELECT * FROM deliveries"))


def test_undeliverable_results_are_retried_with_backoff_then_marked_failed(tmp_path):
    closed = Destination("PACS", LOOPBACK, free_port())  # nobody listens
    pipeline = Pipeline(tmp_path / "data", closed, max_attempts=3)
    pipeline.add_result()
    assert pipeline.queue.run_once()
    first = pipeline.delivery()
    assert (first["state"], first["attempts"]) == ("pending", 1)
    assert first["next_attempt_at"] == pipeline.now + 5
    assert "association" in first["last_error"]
    assert pipeline.data_dir.resolve(first["path"]).is_file()  # built once, kept for retries
    assert not pipeline.queue.run_once()  # not due yet
    pipeline.now += 5
    pipeline.queue.run_once()
    assert pipeline.delivery()["next_attempt_at"] == pipeline.now + 10  # doubled
    pipeline.now += 10
    pipeline.queue.run_once()
    assert (pipeline.delivery()["state"], pipeline.delivery()["attempts"]) == ("failed", 3)
    assert pipeline.delivered == []


def test_a_superseded_result_is_not_sent(tmp_path):
    pipeline = Pipeline(tmp_path / "data", Destination("PACS", LOOPBACK, free_port()))
    pipeline.add_result()
    pipeline.add_result()  # the newer result of the same series
    pipeline.queue.run_once()
    states = [row["state"] for row in pipeline.db.query("SELECT state FROM deliveries ORDER BY id")]
    assert states == ["superseded", "pending"]


def test_the_sr_reaches_a_real_storage_scp(tmp_path):
    storescp = require_program("/usr/bin/storescp")
    received = tmp_path / "received"
    received.mkdir()
    port = free_port()
    scp = subprocess.Popen(
        [storescp, "-aet", "PACS", "-od", str(received), str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, proc=scp)
        pipeline = Pipeline(tmp_path / "data", Destination("PACS", LOOPBACK, port))
        result = pipeline.add_result()
        pipeline.queue.run_once()
        assert pipeline.delivery()["state"] == "sent"
        (file,) = wait_for(lambda: list(received.iterdir()), timeout=10)
        sr = pydicom.dcmread(file)
        assert sr.Modality == "SR" and sr.StudyInstanceUID == STUDY
        assert pipeline.delivered[0]["series_uid"] == result.series_uid
    finally:
        scp.terminate()
        scp.wait(timeout=10)


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    return make_tls_files(tmp_path_factory.mktemp("tls"))


@contextlib.contextmanager
def storescp_over_tls(folder, key, cert, ca):
    """dcmtk's storescp with TLS on a free port, requiring a client certificate from ``ca``."""
    storescp = require_program("/usr/bin/storescp")
    folder.mkdir()
    port = free_port()
    tls_options = ["+tls", str(key), str(cert), "+cf", str(ca)]
    scp = subprocess.Popen(
        [storescp, *tls_options, "-aet", "PACS", "-od", str(folder), str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "TCP_NODELAY": "1"},
    )
    try:
        wait_for_port(port, proc=scp)
        yield port
    finally:
        scp.terminate()
        scp.wait(timeout=10)


def test_the_sr_goes_to_a_real_tls_pacs_when_tls_is_configured(tmp_path, tls):
    received = tmp_path / "received"
    with storescp_over_tls(received, tls.server_key, tls.server_cert, tls.ca_cert) as port:
        pipeline = Pipeline(
            tmp_path / "data",
            Destination("PACS", LOOPBACK, port),
            **results_tls(tls),
        )
        pipeline.add_result()
        pipeline.queue.run_once()
        assert pipeline.delivery()["state"] == "sent", pipeline.delivery()["last_error"]
        (file,) = wait_for(lambda: list(received.iterdir()), timeout=10)
        assert pydicom.dcmread(file).Modality == "SR"


def results_tls(tls) -> dict:
    return {"tls_ca": tls.ca_cert, "tls_cert": tls.client_cert, "tls_key": tls.client_key}


def test_over_tls_a_pacs_with_a_certificate_our_ca_did_not_sign_gets_nothing(tmp_path, tls):
    received = tmp_path / "received"
    # the impostor trusts our client certificate, but its own is from another CA
    with storescp_over_tls(received, tls.stranger_key, tls.stranger_cert, tls.ca_cert) as port:
        pipeline = Pipeline(
            tmp_path / "data",
            Destination("PACS", LOOPBACK, port),
            max_attempts=3,
            **results_tls(tls),
        )
        pipeline.add_result()
        pipeline.queue.run_once()
        delivery = pipeline.delivery()
        assert (delivery["state"], delivery["attempts"]) == ("pending", 1)
        assert "association" in delivery["last_error"]
        assert list(received.iterdir()) == []
        assert pipeline.delivered == []
