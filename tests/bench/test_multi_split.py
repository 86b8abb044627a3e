"""``ftl-bench federation --splits N``: per-split documents, the combined schema, intervals, plots."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest

from ftlct.bench.cli import app
from ftlct.bench.multi_split import combine_splits, split_seeds
from ftlct.bench.split_report import cost_table
from ftlct.protocol.cli import run

from .test_federation_cli import METRIC_KEYS, tiny_args


def fake_split(seed: int, f1: dict[str, float]) -> dict:
    """A results.json of one split with just what combine_splits reads."""
    return {
        "seed": seed,
        "dataset": {"path": "d", "classes": ["a", "b"], "n": 10, "n_test": 4 + seed},
        "sites": 2,
        "rounds": 2,
        "target_f1": 0.5,
        "run": {"wall_s": 10.0},
        "methods": {
            name: {
                "accuracy": value,
                "precision": value,
                "recall": value,
                "f1": value,
                "confusion_matrix": [[seed, 1], [1, seed]],
                "convergence_time_s": 1.0 + seed,
                "convergence_round": 1,
                "time_to_target_s": None if name == "fedavg" else 2.0,
                "rounds_to_target": None if name == "fedavg" else 2,
                "bytes_up_per_round": 100,
                "history": [{"round": r, "f1": value, "accuracy": value, "elapsed_s": r} for r in (1, 2)],
            }
            for name, value in f1.items()
        },
    }  # fmt: skip


def test_split_k_uses_seed_plus_k():
    assert split_seeds(10, 3) == [10, 11, 12]
    with pytest.raises(ValueError):
        split_seeds(0, 0)


def test_combined_results_keep_the_design_schema_and_add_intervals():
    docs = [
        fake_split(0, {"ftl": 0.80, "fedavg": 0.70}),
        fake_split(1, {"ftl": 0.70, "fedavg": 0.62}),
        fake_split(2, {"ftl": 0.75, "fedavg": 0.64}),
    ]
    combined = combine_splits(docs, chosen_on="seed 99")
    ftl = combined["methods"]["ftl"]
    assert ftl["f1"] == pytest.approx(0.75)
    assert ftl["confusion_matrix"] == [[3, 3], [3, 3]]
    assert combined["methods"]["fedavg"]["rounds_to_target"] is None
    assert combined["methods"]["fedavg"]["reached_target"] == 0
    multi = combined["multi_split"]
    assert multi["seeds"] == [0, 1, 2] and multi["chosen_on"] == "seed 99"
    f1 = multi["summary"]["ftl"]["f1"]
    assert f1["n"] == 3 and f1["ci95"][0] < 0.75 < f1["ci95"][1]
    assert multi["summary"]["fedavg"]["time_to_target_s"]["missing"] == 3
    diff = multi["paired"]["ftl - fedavg"]["f1"]
    assert diff["mean"] == pytest.approx(np.mean([0.10, 0.08, 0.11]), abs=1e-4)
    assert diff["excludes_zero"] and diff["wins"] == 3
    assert "fedavg - ftl" not in multi["paired"]  # differences are FTL minus the others
    assert [s["history_f1"]["ftl"] for s in multi["per_split"]][1] == [0.70, 0.70]


def test_combining_nothing_is_an_error():
    with pytest.raises(ValueError):
        combine_splits([])


@pytest.fixture(scope="module")
def two_splits(image_folder, imagenet_weights, tmp_path_factory):
    root = tmp_path_factory.mktemp("splits")
    args = tiny_args(image_folder, root / "out", root / "cache", "--splits", "2")
    args[args.index("--methods") + 1] = "ftl,fedavg,central"
    assert run(app, "ftl-bench", args) == 0
    return root / "out"


def test_splits_run_with_their_own_seed_and_test_split(two_splits):
    per_split = [
        json.loads((two_splits / "splits" / f"seed-{s}" / "split.json").read_text()) for s in (0, 1)
    ]
    tests = [{row["path"] for row in doc["test"]} for doc in per_split]
    assert tests[0] != tests[1]
    for s in (0, 1):
        doc = json.loads((two_splits / "splits" / f"seed-{s}" / "results.json").read_text())
        assert doc["seed"] == s and "multi_split" not in doc


def test_multi_split_results_and_report(two_splits):
    results = json.loads((two_splits / "results.json").read_text())
    assert set(results["methods"]) == {"ftl", "fedavg", "central"}
    for method in results["methods"].values():
        for key in METRIC_KEYS:
            assert key in method
    multi = results["multi_split"]
    assert multi["n_splits"] == 2 and multi["seeds"] == [0, 1]
    assert set(multi["paired"]) == {"ftl - fedavg", "ftl - central"}
    report = (two_splits / "report.md").read_text()
    assert "## Over 2 splits (seeds 0-1)" in report
    assert "| ftl - fedavg |" in report
    assert "| method | rounds | bytes up per site per round |" in report
    for name in ("f1_by_split.png", "f1_vs_round_splits.png"):
        assert (two_splits / name).stat().st_size > 1000


def test_zero_splits_is_a_one_line_error(image_folder, tmp_path, capsys):
    args = tiny_args(image_folder, tmp_path / "out", tmp_path / "cache", "--splits", "0")
    assert run(app, "ftl-bench", args) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--splits" in err


def test_a_finished_split_is_reused_and_the_next_one_runs(two_splits, image_folder, tmp_path):
    out = tmp_path / "resumed"
    shutil.copytree(two_splits / "splits", out / "splits")
    seed0 = out / "splits" / "seed-0" / "results.json"
    document = json.loads(seed0.read_text())
    document["run"]["wall_s"] = 12345.0  # a mark only a reused document carries
    seed0.write_text(json.dumps(document))
    (out / "splits" / "seed-1" / "results.json").write_text('{"settings": ')  # cut short
    cache = two_splits.parent / "cache"
    args = tiny_args(image_folder, out, cache, "--splits", "3")
    args[args.index("--methods") + 1] = "ftl,fedavg,central"
    assert run(app, "ftl-bench", args) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["multi_split"]["seeds"] == [0, 1, 2]
    walls = [json.loads((out / "splits" / f"seed-{s}" / "results.json").read_text())["run"]["wall_s"] for s in (0, 1, 2)]  # fmt: skip
    assert walls[0] == 12345.0 and walls[1] != 12345.0  # seed 1 ran again, seed 2 is new
    assert results["run"]["wall_s"] == pytest.approx(sum(walls), abs=0.2)


def test_a_split_run_with_other_settings_is_not_reused(two_splits):
    from ftlct.bench.multi_split import finished_split
    from ftlct.bench.settings import BenchSettings

    folder = two_splits / "splits" / "seed-0"
    saved = json.loads((folder / "results.json").read_text())["settings"]
    tables = {k: type(getattr(BenchSettings(), k))(**v) for k, v in saved.items() if isinstance(v, dict)}  # fmt: skip
    same = BenchSettings(**{**saved, **tables})
    same.out, same.threads = "elsewhere", 2  # not part of the figures
    assert finished_split(folder, same) is not None
    other = dataclasses.replace(same, rounds=same.rounds + 1)
    assert finished_split(folder, other) is None
    assert finished_split(folder, BenchSettings()) is None
    assert finished_split(folder.parent / "seed-99", same) is None  # no document at all


def test_the_cost_table_gives_bytes_per_round_and_per_run_and_rounds_to_target():
    docs = [fake_split(s, {"ftl": 0.8, "fedavg": 0.7}) for s in (0, 1)]
    docs[1]["methods"]["ftl"]["rounds_to_target"] = 4
    docs[0]["methods"]["fedavg"]["bytes_up_per_round"] = 3 * 1024 * 1024
    table = cost_table(combine_splits(docs))
    rows = {line.split(" | ")[0].strip("| "): line for line in table.splitlines()[2:]}
    # ftl: 100 B a round over 2 rounds; the target at rounds 2 and 4
    assert rows["ftl"] == "| ftl | 2 | 100 B | 200 B | 3.0 (2/2 splits) |"
    # fedavg: the mean of 3 MiB and 100 B a round; never reached the target
    assert rows["fedavg"] == "| fedavg | 2 | 1.50 MiB | 3.00 MiB | never (0/2 splits) |"
