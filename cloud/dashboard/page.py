"""The dashboard page: the federation and every scanner's twin, as one HTML document.

Twin states and update metrics come from the network: every value goes through
``_e`` (HTML escape, quotes included) on its way out, whatever its type, and
no value is ever placed in a URL, a style or a script.
"""

from __future__ import annotations

import time
from html import escape

from ftlct.cloud.dashboard.svg_plot import line_plot
from ftlct.cloud.status_report import shift_text

REFRESH_S = 15


def _e(value) -> str:
    return escape("-" if value is None or value == "" else str(value), quote=True)


def _num(value, digits: int = 3) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return _e(value)
    return _e(f"{value:.{digits}f}" if isinstance(value, float) else value)


def _get(mapping, *keys):
    """``mapping[k1][k2]...`` or None, for data whose shape is not trusted."""
    for key in keys:
        if not isinstance(mapping, dict):
            return None
        mapping = mapping.get(key)
    return mapping


def _table(header: list[str], rows: list[list[str]], empty: str, css: str = "") -> str:
    if not rows:
        return f'<p class="empty">{_e(empty)}</p>'
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(row) + "</tr>" for row in rows)
    return f'<table class="{css}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _cell(value, numeric: bool = False) -> str:
    return f'<td class="num">{_num(value)}</td>' if numeric else f"<td>{_e(value)}</td>"


def _ago(ts, now: float) -> str:
    if not isinstance(ts, int | float):
        return "never"
    seconds = max(0, int(now - ts))
    for size, unit in ((86400, "d"), (3600, "h"), (60, "min")):
        if seconds >= size:
            return f"{seconds // size} {unit} ago"
    return f"{seconds} s ago"


def render_page(snapshot: dict | None, now: float | None = None, error: str = "") -> str:
    now = time.time() if now is None else now
    if snapshot is None:
        body = f'<p class="empty">{_e(error or "no federation state yet (has ftl-cloud serve started?)")}</p>'
        return _document("ftl-cloud", body)
    title = f"federation {snapshot.get('federation') or '-'}"
    body = "".join(
        [
            f"<h1>{_e(title)}</h1>",
            _summary(snapshot),
            "<h2>Learning</h2>",
            _plots(snapshot["history"]),
            "<h2>Clusters</h2>",
            _clusters(snapshot),
            "<h2>Rejected updates</h2>",
            _rejections(snapshot),
            "<h2>Rounds</h2>",
            _rounds(snapshot["history"]),
            "<h2>Scanners</h2>",
            _twins(snapshot["sites"], now),
        ]
    )
    return _document(title, body)


def _document(title: str, body: str) -> str:
    return (
        "<!DOCTYPE html>"
        '<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="refresh" content="{REFRESH_S}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)} · ftl-cloud</title>"
        '<link rel="stylesheet" href="/dashboard.css"></head>'
        f"<body>{body}<footer>read-only view of the cloud's state; refreshes every "
        f"{REFRESH_S} s · JSON: /status.json</footer></body></html>"
    )


def _summary(s: dict) -> str:
    versions = ", ".join(f"{c}: {v}" for c, v in sorted(s["global_versions"].items())) or "-"
    online = sum(1 for info in s["sites"].values() if info.get("online"))
    facts = [
        ("strategy", s.get("strategy")),
        ("federates", s.get("model_kind")),
        ("round", f"{s['round']} ({s['round_status']})"),
        ("deadline", s.get("deadline")),
        ("rounds completed", s["rounds_completed"]),
        ("global versions", versions),
        ("updates this round", ", ".join(s.get("updates_this_round", [])) or "-"),
        ("sites online", f"{online} of {len(s['sites'])}"),
    ]
    items = " · ".join(
        f'<span id="fact-{_e(k.replace(" ", "-"))}">{_e(k)}: <b>{_e(v)}</b></span>'
        for k, v in facts
    )
    return f'<p class="meta">{items}</p>'


def _plots(history: list[dict]) -> str:
    def series(key):
        return [(h["round"], h[key]) for h in history if isinstance(h.get(key), int | float)]

    f1 = line_plot(
        "macro-F1 per round (sites' held-out series)",
        {"new local head": series("f1"), "global head": series("global_f1")},
        y_range=(0.0, 1.0),
    )
    loss = line_plot("training loss per round (last local epoch)", {"loss": series("loss")})
    return (
        f'<div class="plots"><figure id="plot-f1">{f1}<figcaption>F1, weighted by the sites\' '
        "samples</figcaption></figure>"
        f'<figure id="plot-loss">{loss}<figcaption>loss, weighted by the sites\' samples'
        "</figcaption></figure></div>"
    )


def _clusters(s: dict) -> str:
    rows = [
        [
            _cell(cluster),
            _cell(s["global_versions"].get(cluster)),
            _cell(", ".join(map(str, sites))),
        ]
        for cluster, sites in sorted(s.get("clusters", {}).items())
    ]
    table = _table(["cluster", "version", "sites"], rows, "no clusters yet")
    splits = [
        [
            _cell(_get(split, "round"), numeric=True),
            _cell(_get(split, "parent")),
            _cell(
                "; ".join(
                    f"{child}: {', '.join(map(str, members))}"
                    for child, members in sorted((_get(split, "children") or {}).items())
                )
            ),
            _cell(_get(split, "cross_similarity"), numeric=True),
        ]
        for split in s.get("splits", [])
        if isinstance(split, dict)
    ]
    return table + _table(
        ["split at round", "parent", "children", "cross similarity"],
        splits,
        "no cluster has split",
    )


def _rejections(s: dict) -> str:
    rows = [
        [_cell(reason), _cell(count, numeric=True)]
        for reason, count in sorted(s["updates_rejected"].items())
    ]
    rows += [
        [_cell(f"twin: {reason}"), _cell(count, numeric=True)]
        for reason, count in sorted(s.get("twin_rejected", {}).items())
    ]
    return _table(["reason", "count"], rows, "none", css="rejections")


def _rounds(history: list[dict]) -> str:
    rows = [
        [
            _cell(h["round"], numeric=True),
            _cell(h["status"]),
            _cell(h["strategy"]),
            _cell(len(h["sites"]), numeric=True),
            _cell(h["n_samples"], numeric=True),
            _cell(h["f1"], numeric=True),
            _cell(h["global_f1"], numeric=True),
            _cell(h["loss"], numeric=True),
            _cell(", ".join(f"{r}={n}" for r, n in sorted(h["rejected"].items()))),
            _cell(h["duration_s"], numeric=True),
            _cell(h["extensions"], numeric=True),
        ]
        for h in reversed(history)
    ]
    header = ["round", "status", "strategy", "updates", "samples", "F1 (new)", "F1 (global)"]
    header += ["loss", "rejected", "duration s", "extensions"]
    return _table(header, rows, "no round yet", css="rounds")


def _twins(sites: dict, now: float) -> str:
    if not sites:
        return '<p class="empty">no site enrolled or heard from</p>'
    return (
        '<div class="twins">'
        + "".join(_twin(site, info, now) for site, info in sites.items())
        + "</div>"
    )


def _twin(site: str, info: dict, now: float) -> str:
    twin = info.get("twin") if isinstance(info.get("twin"), dict) else {}
    online = bool(info.get("online"))
    queues = _get(twin, "queue_depths") or {}
    scanner = _get(twin, "scanner") or {}
    privacy = _get(twin, "privacy") or {}
    limit = privacy.get("epsilon_limit") if isinstance(privacy, dict) else None
    spent = privacy.get("epsilon_spent") if isinstance(privacy, dict) else None
    facts = [
        ("status", twin.get("status") or info.get("status")),
        ("agent version", twin.get("agent_version")),
        ("model version", info.get("model_version")),
        ("cluster", info.get("cluster")),
        ("enrolled", "yes" if info.get("enrolled") else "NO"),
        (
            "last seen",
            f"{info.get('last_seen') or 'never'} ({_ago(info.get('last_seen_ts'), now)})",
        ),
        (
            "queues",
            ", ".join(f"{k} {v}" for k, v in queues.items())
            if isinstance(queues, dict)
            else queues,
        ),
        ("outbox", twin.get("outbox")),
        (
            "result latency",
            f"p50 {_fmt(_get(twin, 'latency', 'p50_s'))} s, p95 {_fmt(_get(twin, 'latency', 'p95_s'))} s",
        ),
        ("privacy spent", "not configured" if not limit else f"ε {_fmt(spent)} of {_fmt(limit)}"),
        (
            "scanner",
            " ".join(str(v) for v in (scanner.get("manufacturer"), scanner.get("model_name")) if v),
        ),
        ("kernels", _counts(scanner.get("kernels"))),
        ("modalities", _counts(scanner.get("modalities"))),
        ("median kVp", scanner.get("median_kvp")),
        ("median slice mm", scanner.get("median_slice_thickness_mm")),
        ("series per day", scanner.get("series_per_day")),
        ("counts", _counts(twin.get("counts"))),
        ("feature shift", shift_text(info)),
        ("feature statistics", _features(info.get("feature_stats"))),
    ]
    rows = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in facts)
    state = "online" if online else "offline"
    return (
        f'<section class="twin" data-site="{_e(site)}"><h3>{_e(site)} '
        f'<span class="{state}">{state}</span></h3><dl>{rows}</dl></section>'
    )


def _fmt(value) -> str:
    return (
        f"{value:.3g}"
        if isinstance(value, int | float) and not isinstance(value, bool)
        else str(value)
    )


def _features(stats) -> str:
    """``feature_stats`` (checked by ``status_report``) as one line: slices, backbone, blocks."""
    if not isinstance(stats, dict):
        return "-"
    blocks = "; ".join(
        f"{b['tap']} {b['pooling']} {_fmt(b['mean'])} ± {_fmt(b['std'])}" for b in stats["blocks"]
    )
    return f"{stats['slices']} slices, backbone {stats['backbone']}: {blocks}"


def _counts(mapping) -> str:
    if not isinstance(mapping, dict):
        return str(mapping) if mapping else "-"
    return ", ".join(f"{k} {v}" for k, v in mapping.items()) or "-"
