"""``ftl-bench perf``: its measuring helpers, its sections, and the int8 backbones it measures."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from ftlct.bench.cli import PERF_SECTIONS, app
from ftlct.bench.perf import SECTIONS, perf_markdown
from ftlct.bench.perf.cloud import cloud_section
from ftlct.bench.perf.ingest import PeakPss, disk_floor_seconds, received_work, smaps_breakdown
from ftlct.bench.perf.measure import goal, interleaved, machine_load, summary
from ftlct.bench.perf.upload_bytes import upload_bytes_section
from ftlct.export.model_dir import HARMONISER_SCOPE
from ftlct.export.quantize import kept_float_nodes, quantize_backbone, quantize_backbone_static
from ftlct.export.verify import ct_phantom
from ftlct.protocol.cli import run


def _embed(path, x):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"image": x})[0]


def _cosine(a, b):
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def _phantoms(model_dir, n):
    from ftlct.export.preprocessing import to_model_input

    return to_model_input([ct_phantom(seed=s) for s in range(n)], model_dir.preprocessing)


def test_static_int8_backbone_keeps_its_float_nodes_and_gives_close_embeddings(model_dir, tmp_path):
    out = tmp_path / "int8.onnx"
    done = quantize_backbone_static(model_dir.backbone_path, out, _phantoms(model_dir, 8))

    # the graph is pre-processed (constants folded) before the float nodes are chosen, so the
    # harmoniser's node list differs from the source's; the network's float Convs do not
    def network_convs(names):
        return [n for n in names if n.endswith("/Conv") and not n.startswith(HARMONISER_SCOPE)]

    assert network_convs(done["kept_float"]) == network_convs(
        kept_float_nodes(model_dir.backbone_path)
    )
    # the harmoniser's blur (a column pass and a row pass), the network's four
    assert done["kept_float_ops"]["Conv"] == 6
    assert done["kept_float_ops"]["Concat"] >= 1 and done["calibration_slices"] == 8
    assert "/harmoniser/Conv" in done["kept_float"]
    assert out.stat().st_size < 0.5 * model_dir.backbone_path.stat().st_size
    x = _phantoms(model_dir, 10)[8:]  # not among the calibration slices
    fp32, int8 = _embed(model_dir.backbone_path, x), _embed(out, x)
    assert int8.shape == fp32.shape
    assert _cosine(fp32, int8).min() > 0.9


def test_static_int8_refuses_too_little_calibration(model_dir, tmp_path):
    with pytest.raises(ValueError, match="calibration needs"):
        quantize_backbone_static(
            model_dir.backbone_path, tmp_path / "q.onnx", _phantoms(model_dir, 2)
        )
    with pytest.raises(FileNotFoundError):
        quantize_backbone_static(tmp_path / "absent.onnx", tmp_path / "q.onnx", np.zeros((8, 3)))


def test_dynamic_int8_backbone_is_smaller_and_gives_close_embeddings(model_dir, tmp_path):
    out = quantize_backbone(model_dir.backbone_path, tmp_path / "int8.onnx")
    assert out.stat().st_size < 0.4 * model_dir.backbone_path.stat().st_size
    x = np.random.default_rng(0).standard_normal((2, 3, 224, 224)).astype(np.float32)
    fp32, int8 = _embed(model_dir.backbone_path, x), _embed(out, x)
    assert int8.shape == fp32.shape == (2, 1280)
    assert _cosine(fp32, int8).min() > 0.9


def test_quantize_refuses_missing_files_and_unknown_types(tmp_path, model_dir):
    with pytest.raises(FileNotFoundError):
        quantize_backbone(tmp_path / "absent.onnx", tmp_path / "q.onnx")
    with pytest.raises(ValueError, match="weight_type"):
        quantize_backbone(model_dir.backbone_path, tmp_path / "q.onnx", weight_type="int4")


def test_summary_gives_median_count_and_spread():
    assert summary([3.0, 1.0, 2.0, 10.0], "s") == {
        "median": 2.5,
        "n": 4,
        "min": 1.0,
        "max": 10.0,
        "unit": "s",
    }
    with pytest.raises(ValueError):
        summary([], "s")


def test_interleaved_runs_alternatives_in_turns_and_counts_cores():
    calls = []
    cores = {}
    samples = interleaved(
        {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
        repeats=3,
        warmup=1,
        cores_used=cores,
    )
    assert calls == ["a", "b"] * 4  # warm-up round, then three rounds in turns
    assert [len(s) for s in samples.values()] == [3, 3]
    assert set(cores) == {"a", "b"}


def test_goal_compares_in_the_stated_direction():
    assert goal("g", 1.6, 1.5, at_least=True, what="x")["met"]
    assert not goal("g", 1.4, 1.5, at_least=True, what="x")["met"]
    assert goal("g", 290, 300, at_least=False, what="x")["met"]
    assert not goal("g", 310, 300, at_least=False, what="x")["met"]


def test_machine_load_records_the_load_around_a_block():
    record = {}
    with machine_load(record):
        sum(range(10000))
    assert set(record["load"]) == {
        "loadavg_1min_before",
        "loadavg_1min_after",
        "cpu_busy_share",
        "seconds",
    }


def test_smaps_breakdown_names_where_resident_memory_sits():
    found = smaps_breakdown(os.getpid())
    assert found["total_mb"] > 1
    assert any("python" in name or name.startswith("[") for name in found if name != "total_mb")
    assert smaps_breakdown(2**22 + 12345) == {}  # no such process


def test_pss_counts_pages_a_parent_and_its_child_share_once(tmp_path):
    from ftlct.bench.perf.peers import Receiver

    # A parent holding 64 MiB of its own and a forked child sharing it (copy-on-write).
    script = (
        "import os, time\n"
        "block = bytearray(64 * 2**20)\n"
        "for i in range(0, len(block), 4096): block[i] = 1\n"
        "if os.fork() == 0: time.sleep(30); os._exit(0)\n"
        "print('ready', flush=True); time.sleep(30)\n"
    )
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().strip() == "ready"
        receiver = Receiver("tree", "TREE", 0, process, Path(tmp_path))
        assert len(receiver.pids()) == 2
        rss, pss = receiver.rss_bytes(), receiver.pss_bytes()
        assert rss >= 2 * 64 * 2**20  # each process counts the shared block
        assert 64 * 2**20 <= pss < rss - 48 * 2**20  # the tree counts it once
    finally:
        process.kill()
        process.wait()


def test_received_work_starts_empty_and_keeps_only_the_logs(tmp_path):
    folder = tmp_path / "ingest"
    (folder / "agent" / "data").mkdir(parents=True)
    (folder / "agent" / "data" / "index.sqlite").write_bytes(b"an earlier run's index")
    with received_work(folder) as work:
        assert list(work.iterdir()) == []  # nothing of the earlier run is measured
        (work / "orthanc" / "storage").mkdir(parents=True)
        (work / "orthanc" / "storage" / "instance").write_bytes(b"x" * 1000)
        (work / "orthanc.log").write_text("started")
    assert [p.name for p in folder.iterdir()] == ["orthanc.log"]

    with pytest.raises(RuntimeError), received_work(folder) as work:
        (work / "slices").mkdir()
        raise RuntimeError("a failing section")
    assert list(folder.iterdir()) == []  # cleaned after a failure too


def test_peak_pss_keeps_the_largest_sum_it_sampled():
    class Tree:
        def __init__(self, name, values):
            self.name, self.values = name, list(values)

        def pss_bytes(self):
            return self.values.pop(0) if len(self.values) > 1 else self.values[0]

    rising = Tree("rising", [1, 5 * 2**20, 3 * 2**20])
    unreadable = Tree("unreadable", [None])
    with PeakPss([rising, unreadable], period_s=0.01) as sampler:
        while len(rising.values) > 1:
            pass  # the sampler thread takes the values
    assert sampler.mb(rising) == 5.0 and sampler.mb(unreadable) == 0.0


def test_disk_floor_writes_and_syncs_every_file_then_removes_the_copies(tmp_path, monkeypatch):
    sources = []
    for index in range(5):
        sources.append(tmp_path / f"in-{index}.dcm")
        sources[-1].write_bytes(bytes([index]) * (1000 + index))
    synced, written = [], []
    real_fsync = os.fsync

    def counting_fsync(fd):
        synced.append(fd)
        written.extend(p.read_bytes() for p in (tmp_path / "floor").glob("*.dcm"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", counting_fsync)
    seconds = disk_floor_seconds(sources, tmp_path / "floor")
    assert seconds > 0
    assert len(synced) == 2 * len(sources)  # each file, then its directory
    assert {p.read_bytes() for p in sources} <= set(written)  # the same bytes went to disk
    assert not list((tmp_path / "floor").iterdir())  # nothing left behind
    with pytest.raises(FileNotFoundError):
        disk_floor_seconds([tmp_path / "missing.dcm"], tmp_path / "floor")


def test_upload_bytes_are_real_envelopes_and_ftl_is_far_smaller(model_dir):
    section = upload_bytes_section(model_dir)
    ftl, fedavg = section["ftl_envelope_bytes"], section["fedavg_envelope_bytes"]
    assert ftl["int8"] < ftl["fp16"] < ftl["fp32"]
    assert fedavg["fp32"] > 4 * section["fedavg_parameters"]  # every float, 4 bytes each
    assert section["goal"]["met"] and section["goal"]["value"] < 1 / 50
    assert ftl["fp16"] > 2 * section["ftl_parameters"]  # the body, plus a signed header


def test_cloud_figures_come_from_a_stored_run_when_there_is_no_module(tmp_path, monkeypatch):
    monkeypatch.setattr("ftlct.bench.perf.cloud.MODULE", "ftlct.bench.no_cloud_scale_here")
    assert "skipped" in cloud_section(tmp_path, quick=True)
    (tmp_path / "cloud_scale.json").write_text(json.dumps({"sites": {"10000": {"rss_mb": 400}}}))
    section = cloud_section(tmp_path, quick=True)
    assert section["sites"] == {"10000": {"rss_mb": 400}}
    assert "separate run" in section["source"]


def test_the_report_puts_every_goal_in_one_table():
    document = {
        "machine": {
            "cpus": 2,
            "processor": "cpu",
            "int8_instructions": [],
            "load_average_at_start": [1.0, 1.0, 1.0],
        },
        "model_under_test": {"version": "v", "backbone_sha256": "ab" * 32},
        "wall_s": 1.0,
        "bytes": {
            "ftl_parameters": 2,
            "fedavg_parameters": 200,
            "ftl_envelope_bytes": {"fp16": 10},
            "fedavg_envelope_bytes": {"fp16": 1000},
            "fedavg_over_ftl_same_codec": {"fp16": 100.0},
            "goal": goal("bytes", 0.01, 0.02, at_least=False, what="ratio"),
            "load": {
                "loadavg_1min_before": 1.0,
                "loadavg_1min_after": 1.0,
                "cpu_busy_share": 0.5,
                "seconds": 1.0,
            },
        },
        "cloud": {"skipped": "not measured"},
    }
    text = perf_markdown(document)
    assert "| bytes | 0.01 | <= 0.02 | yes | ratio |" in text
    assert "## Cloud scale" in text and "not measured" in text


def test_cli_sections_match_the_benchmark():
    assert PERF_SECTIONS == SECTIONS


def test_perf_rejects_bad_arguments(tmp_path, capsys):
    assert run(app, "ftl-bench", ["perf", "--out", str(tmp_path), "--threads", "two"]) == 1
    assert "--threads" in capsys.readouterr().err
    assert run(app, "ftl-bench", ["perf", "--out", str(tmp_path), "--only", "speed"]) == 1
    assert "unknown sections" in capsys.readouterr().err
    args = ["perf", "--out", str(tmp_path), "--model", str(tmp_path / "nope")]
    assert run(app, "ftl-bench", args) == 1
    assert "not a model directory" in capsys.readouterr().err


def test_a_failing_section_is_reported_and_fails_the_command_after_the_rest_ran(
    tmp_path, model_dir, monkeypatch, capsys
):
    from ftlct.bench.perf import upload_bytes

    def broken(model):
        raise RuntimeError("no envelope today")

    monkeypatch.setattr(upload_bytes, "upload_bytes_section", broken)
    # no cloud-scale module: the section that follows is skipped, in seconds
    monkeypatch.setattr("ftlct.bench.perf.cloud.MODULE", "ftlct.bench.no_cloud_scale_here")
    args = ["perf", "--out", str(tmp_path), "--model", str(model_dir.path), "--only", "bytes,cloud"]
    assert run(app, "ftl-bench", args) == 1
    assert "bytes (RuntimeError: no envelope today)" in capsys.readouterr().err
    document = json.loads((tmp_path / "perf.json").read_text())
    assert document["bytes"]["error"] == "RuntimeError: no envelope today"
    assert "skipped" in document["cloud"]  # the next section still ran
    assert "Failed: RuntimeError" in (tmp_path / "perf.md").read_text()


@pytest.mark.perf
def test_perf_quick_run_reports_every_model_figure(tmp_path, model_dir):
    args = [
        "perf",
        "--out",
        str(tmp_path),
        "--quick",
        "--threads",
        "1",
        "--model",
        str(model_dir.path),
    ]
    assert run(app, "ftl-bench", [*args, "--only", "backbone,int8,bytes,model"]) == 0
    document = json.loads((tmp_path / "perf.json").read_text())
    sessions = document["backbone"]["sessions"][0]
    assert sessions["threads"] == 1 and sessions["figures"]["agent"]["median"] > 0
    assert document["int8"]["speed"]["int8 static QDQ"]["n"] == 3
    accuracy = document["int8"]["accuracy"]
    if "fidelity" in accuracy:  # covid-ct present: every 4th image, 3 splits
        assert accuracy["fidelity"]["int8 static QDQ"]["images"] == accuracy["images"]
        assert accuracy["multi_split"]["int8 static QDQ"]["drop"]["int8 sites"]["n"] == 3
    parity = document["model"]["torch_vs_ort"]
    assert parity["max_rel_diff"] <= parity["parity_limit"], parity
    text = (tmp_path / "perf.md").read_text()
    assert "## Goals (issue 13)" in text and "| backbone |" in text and "| int8 speed |" in text


@pytest.mark.perf
@pytest.mark.slow
def test_perf_quick_run_measures_the_receivers(tmp_path, model_dir):
    from tests.support.paths import require_program

    for program in ("/usr/bin/storescp", "/usr/bin/storescu", "/usr/sbin/Orthanc"):
        require_program(program)
    args = ["perf", "--out", str(tmp_path), "--quick", "--model", str(model_dir.path)]
    assert run(app, "ftl-bench", [*args, "--only", "ingest"]) == 0
    ingest = json.loads((tmp_path / "perf.json").read_text())["ingest"]
    one = ingest["by_associations"]["1_association"]["seconds"]
    assert set(one) == {
        "storescp",
        "orthanc",
        "agent",
        "agent-eager-off",
        "agent-2-receive-processes",
    }
    floor = ingest["by_associations"]["1_association"]["disk_floor_seconds"]
    assert floor["n"] >= 1 and floor["median"] > 0
    assert "Disk floor:" in (tmp_path / "perf.md").read_text()
    assert ingest["memory"]["agent_peak_rss_mb"] > 50
    # the two-process agent's memory counts its workers too
    memory = ingest["memory"]
    assert memory["agent_2_receive_processes_peak_rss_mb"] > memory["agent_peak_rss_mb"] / 2 + 50
    # summed PSS: the workers add their own pages, and the pages they share count once
    pss = memory["agent_2_receive_processes_peak_pss_mb"]
    assert memory["agent_peak_pss_mb"] < pss < memory["agent_2_receive_processes_peak_rss_mb"]
