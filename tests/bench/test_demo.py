"""``make demo``: its data split and the whole local federation, small, with CT phantoms."""

import subprocess
import sys
from collections import Counter

import pytest

from ftlct.bench.demo_data import covid_ct_split, phantom_split
from tests.support.paths import COVID_CT, require, require_program


def _run_demo(*args, timeout=600):
    return subprocess.run(
        [sys.executable, "-m", "ftlct.bench.demo", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_covid_ct_split_is_balanced_and_never_splits_a_group(tmp_path):
    import csv

    root = require(COVID_CT)
    split = covid_ct_split(root, tmp_path, ["a", "b"], per_site=40, test=40, seed=3)
    with open(root / "manifest.csv", newline="") as handle:
        group_of = {row["path"].split("/")[-1]: row["group"] for row in csv.DictReader(handle)}
    sides = {"test": split.test, **split.train}
    groups = {side: {group_of[s.source] for s in studies} for side, studies in sides.items()}
    for side, studies in sides.items():
        assert Counter(s.label for s in studies) == {"normal": 20, "abnormal": 20}, side
        for other in sides:
            if other != side:
                assert not groups[side] & groups[other], (side, other)


def test_phantom_split_needs_no_shared_data(tmp_path):
    split = phantom_split(tmp_path, ["a", "b"], per_site=4, test=2, seed=0)
    assert [len(split.train["a"]), len(split.train["b"]), len(split.test)] == [4, 4, 2]
    assert all(len(s.paths) == 3 for s in split.test)


def test_demo_without_a_model_says_so_in_one_line(tmp_path):
    result = _run_demo("--model", str(tmp_path / "absent"), "--workdir", str(tmp_path / "w"))
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("demo:") and "make model" in line


@pytest.mark.slow
def test_demo_runs_a_whole_federation_with_phantoms(tmp_path, model_dir):
    require_program("/usr/sbin/mosquitto")
    result = _run_demo(
        "--phantoms", "--model", str(model_dir.path), "--workdir", str(tmp_path / "demo"),
        "--rounds", "1", "--per-site", "24", "--test", "8",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    rows = [line.split() for line in result.stdout.splitlines() if line.startswith("hospital-")]
    assert [row[0] for row in rows] == ["hospital-a", "hospital-b"]
    for row in rows:
        assert row[1] == "6" and row[2] == "1" and row[3].startswith("r1-global-")
        assert 0.0 <= float(row[4]) <= 1.0
