"""The cloud-scale benchmark at a small N: real mosquitto, real ``ftl-cloud serve``, each update once."""

from __future__ import annotations

import json

import pytest

from ftlct.bench import cloud_scale
from ftlct.bench.perf.cloud import cloud_section

GOAL_KEYS = {"goal", "value", "target", "met", "what"}  # what ftl-bench perf lists


@pytest.mark.slow
def test_a_small_fleet_is_counted_once_each_and_reported_with_its_goals(tmp_path, monkeypatch):
    monkeypatch.setattr(cloud_scale, "QUICK_SITES", (100,))  # ftl-bench perf --quick, smaller
    section = cloud_section(tmp_path, quick=True)
    assert section["source"].endswith("(this run)")
    report = {key: section[key] for key in ("fleets", "goals")}
    (fleet,) = report["fleets"]
    assert fleet["sites"] == 100 and fleet["counted"] == 100
    assert fleet["messages"] == {"accepted": 100} and fleet["receipts"] == 100
    assert fleet["updates_rejected"] == {} and fleet["updates_duplicate"] == 0
    assert fleet["head_is_mean_of_deltas"] and fleet["every_update_once"]
    assert fleet["head_after_last_s"] > 0 and fleet["cloud_cpu_ms_per_update"] > 0
    assert 0 < fleet["cloud_peak_rss_mb"] < 10_000
    assert all(set(g) == GOAL_KEYS for g in report["goals"])
    cloud_scale.write_report(report, tmp_path / "out")
    assert json.loads((tmp_path / "out" / "cloud_scale.json").read_text()) == report
    assert "| 100 |" in (tmp_path / "out" / "cloud_scale.md").read_text()


def _fleet(sites: int, **changes) -> dict:
    fleet = {
        "sites": sites,
        "head_after_last_s": 2.0,
        "cloud_peak_rss_mb": 100.0,
        "cloud_cpu_ms_per_update": 1.0,
        "every_update_once": True,
    }
    return {**fleet, **changes}


def test_a_lost_update_slow_head_or_growing_cost_misses_its_goal():
    fine = cloud_scale.goals([_fleet(1000), _fleet(10000)])
    assert len(fine) == 4 and all(g["met"] for g in fine)
    missed = cloud_scale.goals(
        [
            _fleet(1000),
            _fleet(10000, head_after_last_s=24.0, cloud_cpu_ms_per_update=2.0),
            _fleet(3000, cloud_peak_rss_mb=600.0, every_update_once=False),
        ]
    )
    assert [g["met"] for g in missed] == [False, False, False, False]
