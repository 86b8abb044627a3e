"""``ftl-bench federation`` end to end on a tiny synthetic folder: schema, determinism, no leaks."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from ftlct.bench.cli import app
from ftlct.protocol.cli import run

METHODS = ("ftl", "ftl_closed_form", "fedavg", "cfl", "fedavg_cnn", "cfl_cnn", "central", "local")
METRIC_KEYS = ("accuracy", "precision", "recall", "f1", "confusion_matrix")


def tiny_args(data, out, cache, *extra):
    return [
        "federation",
        "--data", str(data),
        "--sites", "3",
        "--rounds", "2",
        "--methods", ",".join(METHODS),
        "--out", str(out),
        "--input-size", "32",
        "--seed", "0",
        "--cache-dir", str(cache),
        "--threads", "1",
        *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def two_runs(image_folder, imagenet_weights, tmp_path_factory):
    """The same tiny experiment twice; the second recomputes every view from the images."""
    root = tmp_path_factory.mktemp("bench")
    cache = root / "cache"
    assert run(app, "ftl-bench", tiny_args(image_folder, root / "a", cache)) == 0
    for views in cache.glob("views-*"):
        shutil.rmtree(views)
    assert run(app, "ftl-bench", tiny_args(image_folder, root / "b", cache)) == 0
    return root / "a", root / "b"


def load(out):
    return json.loads((out / "results.json").read_text())


def test_results_follow_the_design_schema(two_runs):
    results = load(two_runs[0])
    assert results["dataset"]["classes"] == ["disc", "square"]
    assert results["dataset"]["n"] == 36
    assert (results["sites"], results["rounds"], results["seed"]) == (3, 2, 0)
    assert set(results["methods"]) == set(METHODS)
    n_views = results["dataset"]["n_test"] * 3
    for name, method in results["methods"].items():
        for key in METRIC_KEYS:
            assert key in method, (name, key)
        for key in ("precision", "recall", "f1", "accuracy"):
            assert 0.0 <= method[key] <= 1.0
        matrix = np.array(method["confusion_matrix"])
        assert matrix.shape == (2, 2) and matrix.sum() == n_views
        for key in (
            "convergence_time_s",
            "time_to_target_s",
            "rounds_to_target",
            "bytes_up_per_round",
        ):
            assert key in method, (name, key)
        one_round = name == "ftl_closed_form"  # statistics once, the head solved
        assert [h["round"] for h in method["history"]] == ([1] if one_round else [1, 2])
        elapsed = [h["elapsed_s"] for h in method["history"]]
        assert elapsed == sorted(elapsed) and elapsed[0] >= 0
        assert method["convergence_time_s"] in elapsed
    ftl, fedavg = results["methods"]["ftl"], results["methods"]["fedavg"]
    assert 4 * 2 * 1281 < ftl["bytes_up_per_round"] < fedavg["bytes_up_per_round"]
    assert results["methods"]["local"]["bytes_up_per_round"] == 0


def test_same_seed_same_numbers(two_runs):
    a, b = (load(out)["methods"] for out in two_runs)
    for name in METHODS:
        for key in (*METRIC_KEYS, "rounds_to_target"):
            assert a[name][key] == b[name][key], (name, key)
        assert [(h["f1"], h["accuracy"]) for h in a[name]["history"]] == [
            (h["f1"], h["accuracy"]) for h in b[name]["history"]
        ]


def test_no_test_image_or_group_reaches_a_site(two_runs, image_folder):
    split = json.loads((two_runs[0] / "split.json").read_text())
    test_paths = {row["path"] for row in split["test"]}
    test_groups = {row["group"] for row in split["test"]}
    seen: set[str] = set()
    for rows in split["sites"].values():
        paths = {row["path"] for row in rows}
        assert not paths & test_paths
        assert not {row["group"] for row in rows} & test_groups
        assert not paths & seen
        seen |= paths
    assert len(seen) + len(test_paths) == 36


def test_report_and_plots_are_written(two_runs):
    out = two_runs[0]
    report = (out / "report.md").read_text()
    assert "| method | accuracy | precision | recall | macro-F1" in report
    for name in METHODS:
        assert f"| {name} |" in report
        with Image.open(out / f"confusion_{name}.png") as image:
            assert image.format == "PNG"
    for name in ("f1_vs_round.png", "f1_vs_time.png"):
        assert (out / name).stat().st_size > 1000


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--methods", "ftl,fedsgd"], "unknown methods"),
        (["--sites", "40"], "cannot fill"),
        (["--scanners", "noisy"], "--scanners"),
        (["--transport", "carrier-pigeon"], "--transport"),
        (["--rounds", "0"], "--rounds"),
    ],
)
def test_bad_requests_fail_with_one_line(
    image_folder, tmp_path, capsys, extra, message, imagenet_weights
):
    args = tiny_args(image_folder, tmp_path / "out", tmp_path / "cache")
    for flag, value in zip(extra[::2], extra[1::2], strict=True):
        if flag in args:
            args[args.index(flag) + 1] = value
        else:
            args += [flag, value]
    assert run(app, "ftl-bench", args) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err


def test_missing_data_folder_is_a_one_line_error(tmp_path, capsys):
    args = tiny_args(tmp_path / "absent", tmp_path / "out", tmp_path / "cache")
    assert run(app, "ftl-bench", args) == 1
    assert "not a directory" in capsys.readouterr().err


def test_report_is_redrawn_from_results_alone(two_runs, tmp_path, capsys):
    out = tmp_path / "copy"
    out.mkdir()
    shutil.copy(two_runs[0] / "results.json", out / "results.json")
    assert run(app, "ftl-bench", ["report", "--out", str(out)]) == 0
    assert (out / "report.md").read_text() == (two_runs[0] / "report.md").read_text()
    assert (out / "f1_vs_round.png").is_file()
    assert run(app, "ftl-bench", ["report", "--out", str(tmp_path / "empty")]) == 1
    assert "no such file" in capsys.readouterr().err
