"""Benchmark: CQ500 (238 JPEG Lossless slices) through storescu, eager embedding on and off.

Prints, does not assert, the timings: they depend on the machine and its load.
``pytest -m perf -s tests/agent/test_perf.py``.
"""

from __future__ import annotations

import json
import time

import pytest

from tests.support.dicom_peers import running_agent, storescu, wait_for
from tests.support.ports import LOOPBACK


@pytest.mark.perf
@pytest.mark.slow
@pytest.mark.parametrize("eager", ["true", "false"])
def test_cq500_latency(tmp_path, model_path, cq500, eager):
    env = {"FTLCT_AGENT_SERIES_QUIET_PERIOD_S": "5", "FTLCT_AGENT_INFERENCE_EAGER": eager}
    with running_agent(tmp_path, model_path, env=env) as agent:
        started = time.monotonic()
        sent = storescu(
            "-xs", "-aec", agent.ae_title, "+sd", "+r", LOOPBACK, str(agent.port), str(cq500)
        )
        send_s = time.monotonic() - started
        assert sent.returncode == 0, sent.stderr
        results = wait_for(lambda: len(r := agent.results()) == 2 and r, timeout=300)
        big = max(results, key=lambda r: r["n_instances"])
        figures = {
            "eager": eager,
            "instances": 239,
            "send_s": round(send_s, 2),
            "instances_per_s": round(239 / send_s, 1),
            "latency_s": big["latency_s"],
            "inference_s": big["inference_s"],
            "quiet_period_s": 5,
        }
        print("\n" + json.dumps(figures))
        assert big["n_slices"] == 238
