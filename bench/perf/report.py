"""``perf.md``: the goals of issue 13 in one table, then each section's figures beside their anchors."""

from __future__ import annotations

import json


def _figure(f: dict) -> str:
    return f"{f['median']} {f['unit']} (n={f['n']}, {f['min']}-{f['max']})"


def _load(section: dict) -> str:
    load = section.get("load") or {}
    if not load:
        return ""
    return (
        f"load average {load['loadavg_1min_before']} -> {load['loadavg_1min_after']}, "
        f"CPU busy {load['cpu_busy_share']} (whole machine), {load['seconds']} s"
    )


def _goals(document: dict) -> list[tuple[dict, str]]:
    found = []
    for name, section in document.items():
        if not isinstance(section, dict):
            continue
        for g in [section.get("goal"), *section.get("goals", [])]:
            if isinstance(g, dict) and "goal" in g:
                found.append((g, name))
    return found


def _table(header: list[str], rows: list[list[object]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return [*lines, ""]


def _backbone(s: dict) -> list[str]:
    lines = ["## Backbone: the agent's path vs a bare onnxruntime session", ""]
    for c in s["sessions"]:
        rows = [[name, _figure(f)] for name, f in c["figures"].items()]
        lines += [
            f"{c['threads']} intra-op thread(s); agent batch {c['agent_batch']}; anchor "
            f"`{c['anchor']}`; agent / anchor = **{c['agent_vs_best_bare']}**",
            "",
            *_table(["session", "images/s"], rows),
        ]
    lv = s["levers"]
    lines += [
        f"Levers, one at a time against onnxruntime's defaults ({lv['threads']} threads, "
        f"batch {lv['batch']}):",
        "",
        *_table(["variant", "images/s"], [[n, _figure(f)] for n, f in lv["figures"].items()]),
    ]
    p = s.get("pipeline")
    if p:
        lines += [
            f"Agent pipeline from stored DICOM ({p['slices']} CQ500 slices, {p['threads']} "
            f"onnxruntime thread(s), {p['decode_threads']} decode threads, batch {p['batch']}): "
            f"{p['pipeline_s']} s against {p['sequential_sum_s']} s for decode then onnxruntime "
            f"one after the other; the overlap hides {p['overlap_hides']:.0%} of the smaller part.",
            "",
            *_table(
                ["stage", "slices/s", "CPU cores it had"],
                [[n, _figure(f), p["cores_used"][n]] for n, f in p["figures"].items()],
            ),
        ]
    return lines


def _int8(s: dict) -> list[str]:
    q = s["quantization"]
    lines = [
        f"## int8 ({s['threads']} thread(s), batch {s['batch']})",
        "",
        f"{q['method']}: weights {q['weights']}, activations {q['activations']}, "
        f"{q['calibration_slices']} calibration slices; kept float: "
        + (
            ", ".join(f"{count} {op}" for op, count in q.get("kept_float_ops", {}).items())
            or "none"
        )
        + ".",
        "",
    ]
    rows = [
        [n, _figure(f), s["speedup_vs_fp32"][n], f"{s['bytes'][n] / 1e6:.1f} MB"]
        for n, f in s["speed"].items()
    ]
    lines += _table(["backbone", "images/s", "x fp32", "file"], rows)
    a = s["accuracy"]
    if "fidelity" in a:
        rows = [
            [n, f["cosine_mean"], f["cosine_min"], f["rel_error_mean"], f["rel_error_max"]]
            for n, f in a["fidelity"].items()
        ]
        lines += [
            f"Embeddings of all {a['images']} covid-ct images against fp32's:",
            "",
            *_table(["backbone", "cosine mean", "cosine min", "rel. error mean", "max"], rows),
        ]
        rows = []
        for n, m in a["multi_split"].items():
            for case, d in m["drop"].items():
                low, high = d["ci95"]
                rows.append(
                    [
                        n,
                        case,
                        m["f1"]["fp32"]["mean"],
                        m["f1"][case]["mean"],
                        d["mean"],
                        f"[{low:+.4f}, {high:+.4f}]",
                        f"{d['wins']}/{d['n']}",
                    ]
                )
        first = next(iter(a["multi_split"].values()))
        lines += [
            f"macro-F1 over {first['splits']}; {first['head']}. int8 sites: the head trained "
            "on int8 embeddings; mixed: the fp32 head on int8 embeddings.",
            "",
            *_table(
                ["backbone", "head", "F1 fp32", "F1 int8", "drop", "95% interval", "fp32 better"],
                rows,
            ),
        ]
    else:
        lines += [f"Accuracy: {a.get('skipped')}", ""]
    lines += ["Per-op profile (onnxruntime profiler, ms per batch):", ""]
    for name, prof in s["profile"].items():
        ops = ", ".join(f"{op} {ms}" for op, ms in prof["by_op_ms"].items())
        lines.append(f"- {name}: {prof['ms_per_batch']} ms: {ops}")
    return [*lines, ""]


def _bytes(s: dict) -> list[str]:
    rows = [
        [
            c,
            s["ftl_envelope_bytes"][c],
            s["fedavg_envelope_bytes"][c],
            f"1/{s['fedavg_over_ftl_same_codec'][c]}",
        ]
        for c in s["ftl_envelope_bytes"]
    ]
    return [
        "## Upload bytes per site per round (sealed site_update envelopes)",
        "",
        f"FTL: the head delta ({s['ftl_parameters']} parameters); FedAvg: the whole MobileNetV2 "
        f"({s['fedavg_parameters']} float parameters).",
        "",
        *_table(["codec", "FTL bytes", "FedAvg bytes", "FTL / FedAvg"], rows),
    ]


def _ingest(s: dict) -> list[str]:
    lines = [
        f"## Ingest: {s['slices']} synthetic 512x512 CT slices ({s['slice_bytes'] / 1e3:.0f} KB), "
        f"{s['passes']} passes, new UIDs each; sender {s['sender']}",
        "",
    ]
    for key, row in s["by_associations"].items():
        cpu = row.get("cpu_seconds", {})
        lines += [
            f"{key.replace('_', ' ')}: agent is {row['agent_vs_orthanc']}x Orthanc, "
            f"{row['agent_vs_storescp']}x storescp (with inference.eager = false: "
            f"{row.get('agent_eager_off_vs_orthanc')}x Orthanc; with 2 receive processes: "
            f"{row.get('agent_2_receive_processes_vs_orthanc')}x Orthanc, "
            f"{row.get('agent_2_receive_processes_vs_storescp')}x storescp)",
            "",
            *_table(
                ["receiver", "seconds", "CPU seconds it used"],
                [
                    [n, _figure(f), _figure(cpu[n]) if n in cpu else "-"]
                    for n, f in row["seconds"].items()
                ],
            ),
        ]
        if "disk_floor_seconds" in row:
            lines += [
                f"Disk floor: {_figure(row['disk_floor_seconds'])} to write the same files one by "
                "one with each file and its directory fsynced (no network, no index); storescp "
                f"plus that floor / agent = {row['agent_vs_storescp_plus_disk_floor']}.",
                "",
            ]
    m = s["memory"]
    lines += [
        f"Agent peak RSS {m['agent_peak_rss_mb']} MB over the run ({m['agent_rss_at_end_mb']} MB at "
        f"the end; Orthanc peak {m['orthanc_peak_rss_mb']} MB; with 2 receive processes, serve "
        f"plus workers {m.get('agent_2_receive_processes_peak_rss_mb')} MB, each one's peak RSS "
        "summed). Peak summed PSS (pages shared between the processes counted once, sampled "
        f"every 0.25 s): agent {m.get('agent_peak_pss_mb')} MB, with 2 receive processes "
        f"{m.get('agent_2_receive_processes_peak_pss_mb')} MB. Resident at the end "
        "by mapping (MB): "
        + ", ".join(f"{k} {v}" for k, v in m["agent_resident_by_mapping_mb"].items()),
        "",
    ]
    return lines


def _latency(s: dict) -> list[str]:
    rows = [[n, _figure(f)] for n, f in s["latency"].items()]
    return [
        f"## Series latency: {s['series']}, quiet period {s['quiet_period_s']} s",
        "",
        *_table(["condition", "last slice -> result"], rows),
        f"{s['background_slices_streamed']} background slices streamed; agent peak RSS "
        f"{s['agent_peak_rss_mb']} MB.",
        "",
    ]


def _model(s: dict) -> list[str]:
    pre, swap, t = s["preprocessing"], s["head_swap"], s["torch_vs_ort"]
    return [
        "## Model figures",
        "",
        "- preprocessing: "
        + (
            pre.get("skipped")
            or f"{pre['files']} CQ500 files, {pre['slices_per_s']} slices/s ({pre['what']})"
        ),
        f"- head swap: write the model directory {swap['write_model_dir_ms']} ms, engine swap "
        f"{swap['engine_swap_ms']} ms",
        f"- torch {t['torch_ms_per_image']} ms/image vs onnxruntime {t['ort_ms_per_image']} ms/image "
        f"({t['threads']} threads, batch {t['batch']}): onnxruntime {t['ort_speedup']}x; max |diff| "
        f"{t['max_abs_diff']:.2e}, {t['max_rel_diff']:.1e} of the embedding's scale (verify's "
        f"limit {t['parity_limit']:.0e})",
        "",
    ]


RENDER = {
    "backbone": _backbone,
    "int8": _int8,
    "bytes": _bytes,
    "ingest": _ingest,
    "latency": _latency,
    "model": _model,
}


def perf_markdown(document: dict) -> str:
    m = document["machine"]
    lines = [
        "# ftl-bench perf",
        "",
        f"{m['cpus']} CPUs ({m['processor']}; int8: {', '.join(m['int8_instructions']) or 'none'}), "
        f"load average at start {m['load_average_at_start']}; wall {document.get('wall_s')} s"
        + (" (quick)" if document.get("quick") else "")
        + f"; model {document['model_under_test']['version']} (backbone {document['model_under_test']['backbone_sha256'][:12]}). "
        "Medians of n with min-max; alternatives timed in turns in the same run.",
        "",
        "## Goals (issue 13)",
        "",
    ]
    rows = [
        [
            g["goal"],
            g["value"],
            g["target"],
            "yes" if g["met"] else "**no**",
            g["what"],
            _load(document[name]),
        ]
        for g, name in _goals(document)
    ]
    lines += _table(["goal", "measured", "target", "met", "what", "load while measured"], rows)
    for name, render in RENDER.items():
        section = document.get(name)
        if not section:
            continue
        if "skipped" in section or "error" in section:
            why = (
                f"Skipped: {section['skipped']}"
                if "skipped" in section
                else f"Failed: {section['error']}"
            )
            lines += [f"## {name}", "", why, ""]
            continue
        lines += render(section)
        if name in ("backbone", "int8", "bytes", "model"):
            lines += [f"Load: {_load(section)}", ""]
    cloud = document.get("cloud")
    if cloud:
        lines += ["## Cloud scale", ""]
        if "skipped" in cloud or "error" in cloud:
            lines += [f"Not measured: {cloud.get('skipped') or cloud.get('error')}", ""]
        else:
            body = {k: v for k, v in cloud.items() if k not in ("goals", "load")}
            lines += ["```json", json.dumps(body, indent=2), "```", ""]
    return "\n".join(lines)
