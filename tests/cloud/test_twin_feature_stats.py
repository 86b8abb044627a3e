"""The sites' feature statistics in the cloud: stored with the twin, reported per site with
the feature shift against the fleet; twins without them (older agents) still accepted."""

from __future__ import annotations

import pytest

from ftlct.cloud.dashboard.page import render_page
from ftlct.cloud.dashboard.snapshot import read_snapshot
from ftlct.cloud.feature_shift import feature_shifts
from ftlct.cloud.state import StateStore
from ftlct.cloud.status_report import status_report, status_table
from ftlct.cloud.twin_registry import TwinRegistry
from ftlct.protocol import exchange
from ftlct.protocol.envelope import seal
from ftlct.protocol.identity import load_or_create_identity
from ftlct.protocol.twin_state import TwinState
from tests.cloud.harness import FED

TAPS = ("features.10", "features.13")


def _stats(means, stds, backbone="0123456789ab", taps=TAPS, slices=512) -> dict:
    blocks = [
        {"tap": tap, "pooling": "mean", "mean": m, "std": s}
        for tap, m, s in zip(taps, means, stds, strict=True)
    ]
    return {"backbone": backbone, "slices": slices, "blocks": blocks}


def test_the_feature_shift_is_the_largest_block_distance_in_fleet_spreads():
    shifts = feature_shifts(
        {
            "a": _stats((1.0, 0.0), (0.5, 1.0)),
            "b": _stats((1.2, 0.1), (0.5, 1.0)),
            "c": _stats((3.0, 0.0), (1.0, 2.0)),
            "other-backbone": _stats((9.0, 9.0), (0.5, 1.0), backbone="fedcba987654"),
            "other-blocks": _stats((9.0, 9.0), (0.5, 1.0), taps=("features.16", "features.17")),
        }
    )
    # features.10: median of means 1.2, spread median(0.5, 0.5, 1.0) = 0.5;
    # features.13: median 0.0, spread median(1, 1, 2) = 1
    assert shifts["a"] == {"value": 0.4, "block": "features.10 mean", "sites": 3}
    assert shifts["b"] == {"value": 0.1, "block": "features.13 mean", "sites": 3}
    assert shifts["c"] == {"value": 3.6, "block": "features.10 mean", "sites": 3}
    # nobody to compare with on their backbone / blocks
    assert shifts["other-backbone"] is None and shifts["other-blocks"] is None


def test_blocks_without_spread_do_not_count_and_a_lone_site_has_no_shift():
    flat = feature_shifts(
        {"a": _stats((1.0, 5.0), (0.0, 1.0)), "b": _stats((2.0, 5.5), (0.0, 1.0))}
    )
    assert flat["a"] == {"value": 0.25, "block": "features.13 mean", "sites": 2}
    assert feature_shifts({"a": _stats((1.0, 0.0), (0.5, 1.0))}) == {"a": None}
    none = feature_shifts(
        {"a": _stats((1.0, 0.0), (0.0, 0.0)), "b": _stats((2.0, 0.0), (0.0, 0.0))}
    )
    assert none == {"a": None, "b": None}


@pytest.fixture
def cloud(tmp_path):
    store = StateStore.open(tmp_path / "state")
    keys = {n: load_or_create_identity(tmp_path / "keys", n) for n in ("a", "b", "c")}
    for name, identity in keys.items():
        store.sites.enroll(name, identity.public_b64)
    yield store, TwinRegistry(store, FED), keys
    store.close()


def test_an_old_twin_without_feature_stats_is_stored_and_reported_without_them(cloud):
    store, registry, keys = cloud
    # exactly what an agent from before the field signs: no feature_stats key at all
    old = {"status": "idle", "model_version": "v0", "counts": {"instances_stored": 3}}
    assert registry.on_state("a", seal("twin_state", FED, old, keys["a"]), False) == "twin"
    site = status_report(store)["sites"]["a"]
    assert site["counts"]["instances_stored"] == 3 and site["status"] == "idle"
    assert site["feature_stats"] is None and site["feature_shift"] is None
    assert "feature_stats" not in store.twins.all()["a"]["state"]


def test_feature_stats_are_stored_reported_and_shown(cloud, tmp_path):
    store, registry, keys = cloud
    for site, means in (("a", (1.0, 0.0)), ("b", (1.2, 0.1)), ("c", (3.0, 0.0))):
        state = TwinState.from_json({"status": "idle", "feature_stats": _stats(means, (0.5, 1.0))})
        payload = exchange.build_twin_state(keys[site], FED, state)
        assert registry.on_state(site, payload, False) == "twin"
    assert store.twins.all()["c"]["state"]["feature_stats"] == _stats((3.0, 0.0), (0.5, 1.0))
    report = status_report(store)
    c = report["sites"]["c"]
    assert c["feature_stats"] == _stats((3.0, 0.0), (0.5, 1.0))
    assert c["feature_shift"] == {"value": 3.6, "block": "features.10 mean", "sites": 3}
    assert "3.6 (features.10 mean, 3 sites)" in status_table(report)
    page = render_page(read_snapshot(tmp_path / "state"))
    assert "feature shift" in page and "3.6 (features.10 mean, 3 sites)" in page
    assert "512 slices, backbone 0123456789ab: features.10 mean 3 ± 0.5" in page


def test_a_twin_with_bad_feature_stats_is_refused_and_the_last_good_one_kept(cloud):
    store, registry, keys = cloud
    good = {"status": "idle", "feature_stats": _stats((1.0, 0.0), (0.5, 1.0))}
    assert registry.on_state("a", seal("twin_state", FED, good, keys["a"]), False) == "twin"
    bad = {"status": "idle", "feature_stats": _stats((1.0, 0.0), (0.5, -1.0))}
    outcome = registry.on_state("a", seal("twin_state", FED, bad, keys["a"]), False)
    assert outcome == "twin_rejected:bad_twin_state"
    assert status_report(store)["twin_rejected"] == {"bad_twin_state": 1}
    assert store.twins.all()["a"]["state"]["feature_stats"] == good["feature_stats"]


def test_stored_feature_stats_of_another_shape_do_not_break_the_report(cloud):
    store, _, _ = cloud
    # a state dir written by another version: the report skips what it cannot read
    store.twins.save(
        "b", {"status": "idle", "feature_stats": {"blocks": "?"}}, "idle", True, "", 1.0
    )
    site = status_report(store)["sites"]["b"]
    assert site["feature_stats"] is None and site["feature_shift"] is None
