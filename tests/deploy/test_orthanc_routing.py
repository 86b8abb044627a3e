"""deploy/orthanc: a study stored into a real Orthanc reaches the agent by the shipped Lua
script alone, and the agent's SR comes back into the same study (and is not routed back)."""

from __future__ import annotations

import json
import re

import pydicom
from pydicom.uid import generate_uid

from tests.agent.synthetic_ct import write_series
from tests.support.dicom_peers import running_agent, wait_for
from tests.support.orthanc import running_orthanc
from tests.support.paths import REPO
from tests.support.ports import LOOPBACK, free_port

ORTHANC_DIR = REPO / "deploy" / "orthanc"


def shipped_routing_config() -> dict:
    """deploy/orthanc/ftlct.json (Orthanc's JSON allows // comments; json does not)."""
    text = (ORTHANC_DIR / "ftlct.json").read_text()
    return json.loads(re.sub(r"^\s*//.*$", "", text, flags=re.MULTILINE))


def test_shipped_config_names_the_script_and_the_agent_modality():
    config = shipped_routing_config()
    assert config["FtlctAgentModality"] in config["DicomModalities"]
    assert [p.rsplit("/", 1)[-1] for p in config["LuaScripts"]] == ["ftlct-route.lua"]
    assert config["UserMetadata"]["FtlctRoutedInstances"] >= 1024  # the user range


def _as_other_modality(series, study_uid: str, modality: str) -> list:
    """Rewrite ``series`` as a series of ``modality`` inside ``study_uid``."""
    series_uid = generate_uid()
    for path in series.paths:
        ds = pydicom.dcmread(path)
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.Modality = study_uid, series_uid, modality
        ds.save_as(path, enforce_file_format=True)
    return series.paths


def test_stable_ct_study_is_routed_to_the_agent_and_its_sr_comes_back(tmp_path, model_path):
    ct = write_series(tmp_path / "ct", "abnormal", n_slices=4, seed=3)
    mr_paths = _as_other_modality(
        write_series(tmp_path / "mr", "normal", 2, seed=4), ct.study_uid, "MR"
    )
    agent_port = free_port()
    config = shipped_routing_config()
    name = config["FtlctAgentModality"]
    config["DicomModalities"] = {name: ["FTLCT", LOOPBACK, agent_port]}
    config["LuaScripts"] = [str(ORTHANC_DIR / "ftlct-route.lua")]
    config["StableAge"] = 2  # 60 s in production
    with (
        running_orthanc(tmp_path / "orthanc", {}, extra=config) as pacs,
        running_agent(
            tmp_path / "agent",
            model_path,
            "--result-destination",
            f"{pacs.ae_title}@{LOOPBACK}:{pacs.dicom_port}",
            "--allow-ae",
            pacs.ae_title,
            port=agent_port,
        ) as agent,
    ):
        # the hospital's side: images arrive in Orthanc; nobody tells it to forward them
        for path in [*ct.paths, *mr_paths]:
            pacs.upload(path)
        (result,) = wait_for(agent.results, timeout=120, interval=0.5)
        assert result["series_uid"] == ct.series_uid and result["n_instances"] == 4
        (sr_series,) = wait_for(
            lambda: pacs.find("Series", {"Modality": "SR"}), timeout=120, interval=0.5
        )
        (study,) = pacs.find("Study", {"StudyInstanceUID": ct.study_uid})
        assert sr_series["ParentStudy"] == study["ID"]
        # the SR made the study change: once stable again, the script sees the CT
        # series as already sent, and never sends the MR or the SR
        wait_for(lambda: "already routed" in pacs.log(), timeout=60, interval=0.5)
        assert agent.stored_sop_uids() == set(ct.sop_uids)
        (ct_series,) = pacs.find("Series", {"SeriesInstanceUID": ct.series_uid})
        routed = pacs.request("GET", f"/series/{ct_series['ID']}/metadata/FtlctRoutedInstances")
        assert routed == b"4"


def test_a_failed_send_is_logged_and_not_marked_as_routed(tmp_path):
    ct = write_series(tmp_path / "ct", "normal", n_slices=2, seed=5)
    config = shipped_routing_config()
    config["DicomModalities"] = {config["FtlctAgentModality"]: ["FTLCT", LOOPBACK, free_port()]}
    config["LuaScripts"] = [str(ORTHANC_DIR / "ftlct-route.lua")]
    config["StableAge"] = 1
    with running_orthanc(tmp_path / "orthanc", {}, extra=config) as pacs:  # no agent listening
        for path in ct.paths:
            pacs.upload(path)
        wait_for(lambda: "FAILED to route series" in pacs.log(), timeout=60, interval=0.5)
        (series,) = pacs.find("Series", {"SeriesInstanceUID": ct.series_uid})
        metadata = pacs.get(f"/series/{series['ID']}/metadata")
        assert "FtlctRoutedInstances" not in metadata
