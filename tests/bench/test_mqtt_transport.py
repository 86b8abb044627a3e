"""``--transport mqtt``: FTL, FedAvg and CFL rounds through a real mosquitto and ``ftl-cloud serve``."""

from __future__ import annotations

import json

from ftlct.agent.store.database import Database
from ftlct.agent.sync.outbox import Outbox
from ftlct.bench.cli import app
from ftlct.protocol.cli import run
from tests.support.paths import require_program
from tests.support.ports import free_port


def args(data, out, cache, *extra, methods="ftl", rounds=2):
    return [
        "federation",
        "--data", str(data),
        "--sites", "3",
        "--rounds", str(rounds),
        "--methods", methods,
        "--out", str(out),
        "--input-size", "32",
        "--cache-dir", str(cache),
        "--threads", "1",
        *extra,
    ]  # fmt: skip


# CFL tests a split every round and makes it whenever the updates are not all parallel, so the
# run shows per-cluster models and assignments travelling over MQTT
FORCED_SPLITS = "[cfl]\nsplit_check_after = 0\neps2 = 0.0\nmax_cross_similarity = 1.0\n"
SAME = ("round", "f1", "accuracy", "clusters", "update_norm_mean", "update_norm_max")


def test_every_method_gives_the_same_numbers_over_mqtt_as_in_process(
    image_folder, imagenet_weights, tmp_path, monkeypatch
):
    require_program("/usr/sbin/mosquitto")
    monkeypatch.setenv("FTLCT_BENCH_MQTT_TIMEOUT_S", "90")  # a stuck round fails, not hangs
    cache = tmp_path / "cache"
    config = tmp_path / "bench.toml"
    config.write_text(FORCED_SPLITS)
    every = {"methods": "ftl,fedavg,cfl"}
    local_args = args(image_folder, tmp_path / "inproc", cache, "--config", str(config), **every)
    assert run(app, "ftl-bench", local_args) == 0
    remote_args = args(
        image_folder, tmp_path / "mqtt", cache, "--config", str(config), "--transport", "mqtt",
        **every,
    )  # fmt: skip
    assert run(app, "ftl-bench", remote_args) == 0
    local, remote = (
        json.loads((tmp_path / name / "results.json").read_text())["methods"]
        for name in ("inproc", "mqtt")
    )
    kinds = {"ftl": "head", "fedavg": "network", "cfl": "network"}
    for method, kind in kinds.items():
        here, there = local[method], remote[method]
        assert here["federation"]["transport"].startswith("in process")
        assert there["federation"]["transport"].startswith("mqtt")
        assert there["federation"]["model_kind"] == kind
        # same trainer, same strategy, same update order (the cloud sorts by site): the
        # global models are the same bit for bit, so every round scores the same
        for a, b in zip(here["history"], there["history"], strict=True):
            assert {k: a.get(k) for k in SAME} == {k: b.get(k) for k in SAME}, method
        assert here["confusion_matrix"] == there["confusion_matrix"], method
        for key in ("clusters", "membership", "splits"):
            assert here["federation"][key] == there["federation"][key], (method, key)
        cloud_log = (tmp_path / "mqtt" / "mqtt" / method / "cloud.log").read_text()
        assert f"new {kind} federation" in cloud_log
        assert "all 2 rounds complete" in cloud_log and "rejected" not in cloud_log
        assert cloud_log.count("accepted update") == 6
        # each site ran the agent's own sync code: its outbox made and delivered every update
        for site in ("site-0", "site-1", "site-2"):
            index = Database(tmp_path / "mqtt" / "mqtt" / method / "sites" / site / "index.sqlite")
            assert Outbox(index).made_and_acknowledged() == (2, 2), (method, site)
            assert Outbox(index).count() == 0
            index.close()
    assert remote["cfl"]["federation"]["splits"]  # CFL did split, over MQTT
    assert len(remote["cfl"]["federation"]["clusters"]) > 1


def test_an_update_the_cloud_refuses_ends_the_run_with_its_reason(
    image_folder, imagenet_weights, tmp_path, capsys, monkeypatch
):
    require_program("/usr/sbin/mosquitto")
    # The sites clip their deltas to the announced norm bound, as an agent does, so the
    # cloud's byte limit (its env wins over the bench's config) is what refuses here.
    monkeypatch.setenv("FTLCT_CLOUD_LIMITS_MAX_UPDATE_BYTES", "4096")
    argv = args(
        image_folder, tmp_path / "out", tmp_path / "cache", "--transport", "mqtt",
        methods="fedavg", rounds=1,
    )  # fmt: skip
    assert run(app, "ftl-bench", argv) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(errors) == 1
    assert "rejected an update" in errors[0] and "oversize" in errors[0]


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
