"""``--transport mqtt``: the same FTL rounds through a real mosquitto and a real ``ftl-cloud serve``."""

from __future__ import annotations

import json

import pytest

from ftlct.bench.cli import app
from ftlct.protocol.cli import run
from tests.support.paths import require_program
from tests.support.ports import free_port


def args(data, out, cache, *extra):
    return [
        "federation",
        "--data", str(data),
        "--sites", "3",
        "--rounds", "2",
        "--methods", "ftl",
        "--out", str(out),
        "--input-size", "32",
        "--cache-dir", str(cache),
        "--threads", "1",
        *extra,
    ]  # fmt: skip


def test_mqtt_rounds_match_the_in_process_rounds(image_folder, imagenet_weights, tmp_path):
    require_program("/usr/sbin/mosquitto")
    cache = tmp_path / "cache"
    assert run(app, "ftl-bench", args(image_folder, tmp_path / "inproc", cache)) == 0
    assert (
        run(app, "ftl-bench", args(image_folder, tmp_path / "mqtt", cache, "--transport", "mqtt"))
        == 0
    )
    local, remote = (
        json.loads((tmp_path / name / "results.json").read_text())["methods"]["ftl"]
        for name in ("inproc", "mqtt")
    )
    assert remote["federation"]["transport"].startswith("mqtt")
    assert local["federation"]["transport"].startswith("in process")
    # same trainer, same strategy: the cloud's float64 sums may differ from in-process
    # ones only in update order, i.e. at float32 rounding
    for a, b in zip(local["history"], remote["history"], strict=True):
        assert a["f1"] == pytest.approx(b["f1"], abs=0.02)
    cloud_log = (tmp_path / "mqtt" / "mqtt" / "ftl" / "cloud.log").read_text()
    assert "all 2 rounds complete" in cloud_log
    assert cloud_log.count("accepted update") == 6
    assert "rejected" not in cloud_log


def test_unreachable_broker_is_a_one_line_error(
    image_folder, imagenet_weights, tmp_path, capsys, monkeypatch
):
    monkeypatch.setenv("FTLCT_BENCH_MQTT_TIMEOUT_S", "3")
    dead = f"mqtt://127.0.0.1:{free_port()}"
    argv = args(
        image_folder, tmp_path / "out", tmp_path / "cache", "--transport", "mqtt", "--broker", dead
    )
    assert run(app, "ftl-bench", argv) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(errors) == 1  # progress lines above it are fine; the reason is one line
    assert "mqtt transport" in errors[0] and "no round 1" in errors[0]
