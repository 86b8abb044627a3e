"""``ftl-agent`` on the command line: help, one-line errors, status/results/infer output."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tests.agent.dicom_files import ct_instance, write_series
from tests.agent.pipeline import Agent
from tests.support.ports import LOOPBACK

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def ftl_agent(*args, env=None, timeout=120):
    return subprocess.run(
        [sys.executable, "-m", "ftlct.agent", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def one_line_error(result, needle):
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("ftl-agent: error:"), lines[0]
    assert needle in lines[0], lines[0]


@pytest.mark.parametrize("command", [[], ["serve"], ["status"], ["results"], ["infer"]])
def test_every_command_has_help(command):
    result = ftl_agent(*command, "--help")
    assert result.returncode == 0
    assert "Usage:" in result.stdout


def test_serve_accepts_every_flag_of_the_contract():
    help_text = ftl_agent("serve", "--help").stdout
    for flag in (
        "--config",
        "--data-dir",
        "--ae-title",
        "--host",
        "--port",
        "--allow-ae",
        "--model",
        "--broker",
        "--site",
        "--federation",
        "--cloud-key",
        "--result-destination",
    ):
        assert flag in help_text


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["serve", "--bogus"], "No such option"),
        (["serve", "--port", "abc"], "--port"),
        (["serve", "--port", "0"], "dicom.port"),
        (["serve", "--ae-title", "THIS-AE-TITLE-IS-TOO-LONG"], "dicom.ae_title"),
        (["serve", "--result-destination", "PACS"], "results.destination"),
        (["serve", "--broker", "tcp://x:1"], "federation.broker"),
        (["serve", "--config", "/nonexistent.toml"], "config file not found"),
        (["serve", "--model", "/nonexistent-model"], "not a model directory"),
        (["status", "--data-dir", "/nonexistent-agent-data"], "no agent data"),
        (["results", "--data-dir", "/nonexistent-agent-data"], "no agent data"),
        (["infer", "/nonexistent.dcm"], "no such file"),
        (["no-such-command"], "No such command"),
    ],
)
def test_bad_input_gives_one_line_and_nonzero_exit(args, needle, tmp_path):
    one_line_error(ftl_agent(*args, env={"XDG_DATA_HOME": str(tmp_path)}), needle)


def test_unknown_environment_setting_is_named(tmp_path):
    result = ftl_agent("status", "--data-dir", tmp_path, env={"FTLCT_AGENT_DICOM_PROT": "1"})
    one_line_error(result, "FTLCT_AGENT_DICOM_PROT")


def test_serve_on_a_busy_port_is_a_one_line_error(tmp_path, model_path):
    with socket.socket() as busy:
        busy.bind((LOOPBACK, 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = ftl_agent(
            "serve",
            "--data-dir",
            tmp_path / "data",
            "--model",
            model_path,
            "--host",
            LOOPBACK,
            "--port",
            port,
        )
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]  # log lines first, then the error
    assert last.startswith(f"ftl-agent: error: cannot serve: DICOM on {LOOPBACK}:{port}")


@pytest.fixture
def data_dir(tmp_path, model_path):
    agent = Agent(tmp_path / "data", model_path)
    series = "1.2.826.0.1.3680043.8.498.77"
    for n in range(3):
        agent.put(ct_instance(series, "1.2.826.0.1.3680043.8.498.78", instance_number=n))
    agent.complete_and_run()
    agent.close()
    return agent.data_dir.root, series


def test_status_and_results_report_the_data_dir(data_dir, model_dir):
    root, series = data_dir
    status = json.loads(ftl_agent("status", "--data-dir", root, "--json").stdout)
    for key in (
        "instances_stored",
        "series_complete",
        "series_inferred",
        "quarantined",
        "labels",
        "model_version",
        "outbox",
    ):
        assert key in status
    assert (status["instances_stored"], status["series_complete"], status["series_inferred"]) == (
        3,
        1,
        1,
    )
    assert status["model_version"] == model_dir.version
    assert (status["labels"], status["outbox"], status["quarantined"]) == (0, 0, 0)

    (row,) = json.loads(ftl_agent("results", "--data-dir", root, "--json").stdout)
    for key in (
        "series_uid",
        "study_uid",
        "n_instances",
        "label",
        "probabilities",
        "model_version",
        "latency_s",
    ):
        assert key in row
    assert (row["series_uid"], row["n_instances"]) == (series, 3)
    assert row["label"] in row["probabilities"]

    table = ftl_agent("results", "--data-dir", root).stdout
    assert "LABEL" in table and series[-10:] in table and row["label"] in table
    assert "instances_stored   3" in ftl_agent("status", "--data-dir", root).stdout


def test_status_reads_the_data_dir_from_the_environment(data_dir):
    root, _ = data_dir
    result = ftl_agent("status", "--json", env={"FTLCT_AGENT_STORAGE_DATA_DIR": str(root)})
    assert json.loads(result.stdout)["instances_stored"] == 3


def test_infer_groups_dicom_by_series_and_classifies_pictures(tmp_path, model_path):
    paths = write_series(tmp_path / "inputs" / "series", 4)
    paths[-1].write_bytes(paths[-1].read_bytes()[:-6000])  # a slice whose pixels are cut short
    picture = tmp_path / "inputs" / "slice.png"
    Image.fromarray((np.random.default_rng(0).random((64, 64)) * 255).astype(np.uint8)).save(
        picture
    )
    (tmp_path / "inputs" / "notes.txt").write_text("ignored inside a folder")
    result = ftl_agent("infer", tmp_path / "inputs", "--model", model_path, "--json")
    assert result.returncode == 0, result.stderr
    rows = sorted(json.loads(result.stdout), key=lambda r: r["kind"])
    assert [(r["kind"], r["n_files"], r["n_slices"]) for r in rows] == [
        ("image", 1, 1),
        ("series", 4, 3),
    ]
    assert len(rows[1]["errors"]) == 1 and paths[-1].name in rows[1]["errors"][0]
    for row in rows:
        assert sum(row["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
        assert row["label"] in ("normal", "abnormal")
    table = ftl_agent("infer", picture, "--model", model_path)
    assert table.returncode == 0 and "slice.png" in table.stdout


def test_infer_with_nothing_classifiable_fails(tmp_path, model_path):
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    result = ftl_agent("infer", text, "--model", model_path, "--json")
    assert result.returncode != 0
    assert json.loads(result.stdout)[0]["error"] == "neither DICOM nor a picture"
    assert (
        result.stderr.strip().splitlines()[-1] == "ftl-agent: error: no input could be classified"
    )


def test_infer_reports_a_slice_whose_codec_panics_and_classifies_the_rest(tmp_path, model_path):
    from tests.agent.dicom_mutations import codec_panic_cases

    paths = write_series(tmp_path / "inputs" / "series", 2)
    panicking = tmp_path / "inputs" / "rle.dcm"
    panicking.write_bytes(codec_panic_cases()[0].data)  # pylibjpeg-rle panics on it
    result = ftl_agent("infer", tmp_path / "inputs", "--model", model_path, "--json")
    assert result.returncode == 0, result.stderr
    rows = {r["n_files"]: r for r in json.loads(result.stdout)}
    assert rows[len(paths)]["n_slices"] == 2 and rows[len(paths)]["label"] in ("normal", "abnormal")
    bad = rows[1]
    assert bad["error"] == "no usable image" and bad["label"] is None
    assert len(bad["errors"]) == 1 and bad["errors"][0].startswith("rle.dcm: ")  # said, not fatal
