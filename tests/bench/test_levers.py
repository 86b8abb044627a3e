"""Lever bookkeeping: settings overlays, merging partial re-runs, the markdown table."""

from __future__ import annotations

import pytest

from ftlct.bench.levers import LEVERS, apply_changes, levers_markdown, merge_levers
from ftlct.bench.settings import BenchSettings


def row(name, f1):
    score = {
        "f1": f1,
        "accuracy": f1,
        "f1_last5_mean": f1,
        "elapsed_s": 1.0,
        "bytes_up_per_round": 11264,
    }
    return {"lever": name, "what": name, "changes": {}, "central": score, "ftl": score}


def doc(rows, command="c1", seed=0, rounds=20):
    return {"command": command, "seed": seed, "rounds": rounds, "data": "d", "levers": rows}


def test_changes_apply_to_nested_settings_and_are_checked():
    settings = apply_changes(BenchSettings(data="x"), {"ftl.head": "mlp", "rounds": 60})
    assert (settings.ftl.head, settings.rounds) == ("mlp", 60)
    with pytest.raises(ValueError, match="unknown setting"):
        apply_changes(BenchSettings(data="x"), {"ftl.heads": "mlp"})
    with pytest.raises(ValueError, match=r"ftl\.head"):
        apply_changes(BenchSettings(data="x"), {"ftl.head": "transformer"})


def test_every_lever_is_a_valid_settings_change():
    for lever in LEVERS:
        apply_changes(BenchSettings(data="x"), lever.changes)


def test_a_partial_rerun_replaces_its_rows_and_keeps_the_others_in_lever_order():
    old = doc([row("base", 0.6), row("default", 0.7)])
    merged = merge_levers(old, doc([row("fedprox", 0.65), row("base", 0.61)], command="c2"))
    assert [r["lever"] for r in merged["levers"]] == ["base", "default", "fedprox"]
    assert merged["levers"][0]["ftl"]["f1"] == 0.61
    assert merged["commands"] == ["c1", "c2"]
    other_seed = doc([row("base", 0.5)], seed=1)
    assert merge_levers(old, other_seed) is other_seed  # never mix splits in one table


def test_markdown_has_one_row_per_lever():
    text = levers_markdown(doc([row("base", 0.6), row("default", 0.7)]))
    assert "| base | base | 0.600 | 0.600 | 0.600 | 11 KiB |" in text
    assert text.count("\n| ") == 4  # header, rule, two rows


def test_server_optimizer_settings_are_checked_and_reach_the_cloud_strategy():
    from ftlct.bench.experiment import _transport

    with pytest.raises(ValueError, match="server_momentum"):
        apply_changes(BenchSettings(data="x"), {"ftl.server_momentum": 1.0})
    settings = apply_changes(
        BenchSettings(data="x"), {"ftl.server_momentum": 0.9, "ftl.server_lr": 0.5}
    )
    ftl = _transport("ftl", settings, plan=None, reporter=None).strategy
    assert (ftl.name, ftl.server.momentum, ftl.server.lr) == ("ftl", 0.9, 0.5)
    # the whole-network baselines keep plain FedAvg, and CFL still gets its own parameters
    cfl = _transport("cfl", settings, plan=None, reporter=None).strategy
    assert (cfl.server.momentum, cfl.server.lr, cfl.eps1) == (0.0, 1.0, settings.cfl.eps1)
