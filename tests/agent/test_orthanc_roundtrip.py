"""A real PACS (Orthanc) sends a study to the agent; the agent's SR result arrives back in it."""

from __future__ import annotations

import io

import pydicom

from tests.support.dicom_peers import running_agent, wait_for
from tests.support.orthanc import running_orthanc
from tests.support.ports import LOOPBACK, free_port


def content_items(ds):
    for item in ds.get("ContentSequence", []):
        yield item
        yield from content_items(item)


def test_orthanc_sends_a_study_and_receives_the_sr_result(tmp_path, model_path, cq500):
    slices = sorted(cq500.glob("*.dcm"))[1:13]  # 12 JPEG Lossless slices of one series
    agent_port = free_port()
    modalities = {"agent": ("FTLCT", LOOPBACK, agent_port)}
    with running_orthanc(tmp_path / "orthanc", modalities) as pacs:
        uploaded = [pacs.upload(path) for path in slices]  # REST POST /instances
        (study_id,) = {answer["ParentStudy"] for answer in uploaded}
        destination = f"{pacs.ae_title}@{LOOPBACK}:{pacs.dicom_port}"
        with running_agent(
            tmp_path / "agent",
            model_path,
            "--result-destination",
            destination,
            "--allow-ae",
            pacs.ae_title,
            port=agent_port,
        ) as agent:
            job = pacs.post(
                "/modalities/agent/store", {"Resources": [study_id], "Synchronous": True}
            )
            assert job is not None
            assert len(agent.stored_sop_uids()) == len(slices)

            def sr_in_orthanc():
                return pacs.find("Series", {"Modality": "SR"})

            (sr_series,) = wait_for(sr_in_orthanc, timeout=120, interval=0.5)
            assert sr_series["ParentStudy"] == study_id  # filed beside the images
            (sr_instance,) = sr_series["Instances"]
            sr = pydicom.dcmread(io.BytesIO(pacs.request("GET", f"/instances/{sr_instance}/file")))
            (result,) = agent.results()
            assert sr.StudyInstanceUID == result["study_uid"]
            refs = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
            assert refs.SeriesInstanceUID == result["series_uid"]
            assert len(refs.ReferencedSOPSequence) == len(slices)
            texts = {
                item.ConceptNameCodeSequence[0].CodeMeaning: item.TextValue
                for item in content_items(sr)
                if item.ValueType == "TEXT"
            }
            assert texts["Algorithm Version"] == result["model_version"]
            assert texts["Impression"].startswith(result["label"])

            # Orthanc can hold the SR a moment before the agent has recorded its C-STORE reply.
            def delivery_counts():
                deliveries = agent.status()["deliveries"]
                counts = (deliveries["sent"], deliveries["pending"], deliveries["failed"])
                return counts if counts != (0, 1, 0) else None

            assert wait_for(delivery_counts, timeout=30, interval=0.2) == (1, 0, 0)
