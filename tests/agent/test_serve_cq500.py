"""The agent as a PACS sees it: dcmtk storescu sends a real head CT (238 JPEG Lossless slices)."""

from __future__ import annotations

import urllib.request

import pydicom

from tests.support.dicom_peers import running_agent, storescu, wait_for
from tests.support.ports import LOOPBACK, free_port


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise KeyError(name)


def test_storescu_sends_cq500_every_instance_stored_and_both_series_inferred(
    tmp_path, model_path, cq500
):
    files = sorted(cq500.glob("*.dcm"))
    expected = {}
    for path in files:
        header = pydicom.dcmread(path, stop_before_pixels=True)
        expected[str(header.SOPInstanceUID)] = str(header.SeriesInstanceUID)
    series_sizes = sorted(list(expected.values()).count(s) for s in set(expected.values()))
    assert series_sizes == [1, 238]

    metrics_port = free_port()
    env = {"FTLCT_AGENT_SERIES_QUIET_PERIOD_S": "5", "FTLCT_AGENT_METRICS_PORT": str(metrics_port)}
    with running_agent(tmp_path, model_path, env=env) as agent:
        # -xs proposes JPEG Lossless (else storescu would have to decompress); +sd +r: a folder
        sent = storescu(
            "-xs",
            "-aet",
            "PACS",
            "-aec",
            agent.ae_title,
            "+sd",
            "+r",
            LOOPBACK,
            str(agent.port),
            str(cq500),
        )
        assert sent.returncode == 0, sent.stderr
        assert agent.stored_sop_uids() == set(expected)  # acknowledged means stored

        results = wait_for(lambda: (r := agent.results()) and len(r) == 2 and r, timeout=180)
        by_size = {r["n_instances"]: r for r in results}
        big = by_size[238]
        assert big["series_uid"] == max(set(expected.values()), key=list(expected.values()).count)
        assert big["n_slices"] == 238 and big["n_skipped"] == 0
        assert set(big["probabilities"]) == {"normal", "abnormal"}
        assert big["label"] in big["probabilities"]
        assert by_size[1]["n_slices"] == 1
        print(
            f"\n238-slice series: latency_s={big['latency_s']} (quiet period 5 s included), "
            f"job inference_s={big['inference_s']}"
        )

        status = agent.status()
        assert (
            status["instances_stored"],
            status["series_complete"],
            status["series_inferred"],
            status["quarantined"],
        ) == (239, 2, 2, 0)

        with urllib.request.urlopen(f"http://{LOOPBACK}:{metrics_port}/metrics") as response:
            text = response.read().decode()
        assert metric(text, 'ftlct_agent_instances_received_total{outcome="stored"}') == 239
        assert metric(text, "ftlct_agent_bytes_received_total") > 10**7
        assert metric(text, "ftlct_agent_series_completed_total") == 2
        assert metric(text, "ftlct_agent_inference_seconds_count") == 2
        assert metric(text, 'ftlct_agent_queue_depth{queue="inference"}') == 0
