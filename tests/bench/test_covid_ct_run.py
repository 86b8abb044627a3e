"""The experiment on the real covid-ct folder (slow; skips without ../shared/data)."""

from __future__ import annotations

import json

import pytest

from ftlct.bench.cli import app
from ftlct.bench.dataset import load_dataset
from ftlct.protocol.cli import run
from tests.support.paths import COVID_CT, require


@pytest.mark.slow
def test_covid_ct_run_keeps_source_groups_apart_and_learns(tmp_path, imagenet_weights):
    data = require(COVID_CT)
    config = tmp_path / "bench.toml"
    config.write_text("[ftl]\njitter_views = 0\n")  # the cheap half of the default run
    argv = [
        "federation", "--data", str(data), "--sites", "3", "--rounds", "5",
        "--methods", "ftl,central,local", "--out", str(tmp_path / "out"), "--config", str(config),
    ]  # fmt: skip
    assert run(app, "ftl-bench", argv) == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    split = json.loads((tmp_path / "out" / "split.json").read_text())
    dataset = load_dataset(data)
    assert results["dataset"]["n"] == len(dataset) == 746
    # the manifest's groups (source paper / patient) never straddle the split
    test_groups = {row["group"] for row in split["test"]}
    assert all(row["group"] not in test_groups for rows in split["sites"].values() for row in rows)
    assert 0.15 < results["dataset"]["n_test"] / 746 < 0.25
    # a frozen ImageNet backbone separates covid from non-covid better than chance
    assert results["methods"]["central"]["f1"] > 0.6
    assert results["methods"]["ftl"]["f1"] > 0.5
