"""``ftl-cloud status``: the fleet and the rounds, read from the state DB (works while serving)."""

from __future__ import annotations

from dataclasses import asdict
from datetime import UTC, datetime

from ftlct.cloud.feature_shift import feature_shifts
from ftlct.cloud.initial_model import federation_kind
from ftlct.cloud.state import StateStore
from ftlct.protocol.errors import ProtocolError
from ftlct.protocol.twin_state import validate_twin_state


def iso(ts: float | None) -> str | None:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds") if ts else None


def checked_feature_stats(state: dict) -> dict | None:
    """A stored twin's ``feature_stats`` if it passes today's schema (a state dir written by
    another version may hold other shapes; the report must not trip over them)."""
    entry = state.get("feature_stats")
    if entry is None:
        return None
    try:
        stats = validate_twin_state({"feature_stats": entry}).feature_stats
    except ProtocolError:
        return None
    return asdict(stats)


def status_report(store: StateStore) -> dict:
    """The ``--json`` object: DESIGN.md's keys first, then details; read as of one commit."""
    with store.snapshot():
        return _report(store)


def _report(store: StateStore) -> dict:
    # Read inside one snapshot only: the round loop commits an aggregation between any two
    # reads otherwise, and a report could say round 1 is open and completed at once.
    last = store.rounds.last()
    loaded = store.models.federation_state()
    membership = loaded[0].membership if loaded else {}
    versions = store.models.current_versions()
    enrolled = store.sites.enrolled()
    twins = store.twins.all()
    received = set(store.updates.sites_of_round(last.round)) if last else set()
    features = {
        site: stats
        for site, twin in twins.items()
        if (stats := checked_feature_stats(twin["state"])) is not None
    }
    shifts = feature_shifts(features)
    sites = {}
    for site in sorted(set(enrolled) | set(twins)):
        twin = twins.get(site)
        sites[site] = {
            "online": twin["online"] if twin else False,
            "model_version": (twin["model_version"] or None) if twin else None,
            "last_seen": iso(twin["last_seen"]) if twin else None,
            "status": twin["status"] if twin else "unknown",
            "enrolled": site in enrolled,
            "cluster": membership.get(site) or (last.cluster_for(site) if last else None),
            "updated_this_round": site in received and last is not None and last.status == "open",
            "counts": twin["state"].get("counts", {}) if twin else {},
            # the scanner's feature statistics as the twin sent them, and how far they lie
            # from the fleet's (cloud/feature_shift.py); None when absent
            "feature_stats": features.get(site),
            "feature_shift": shifts.get(site),
        }
    counters = store.counters.all()
    clusters: dict[str, list[str]] = {cluster: [] for cluster in versions}
    for site, cluster in sorted(membership.items()):
        clusters.setdefault(cluster, []).append(site)
    return {
        "round": last.round if last else 0,
        "rounds_completed": store.rounds.completed(),
        "global_versions": versions,
        "sites": sites,
        "updates_rejected": store.rejections.counts(),
        "federation": store.meta.get("federation"),
        "round_status": ("open" if last.status == "open" else "finished") if last else "none",
        "deadline": iso(last.deadline) if last and last.status == "open" else None,
        "strategy": last.strategy if last else None,
        # what the federation federates and its pin (README "Cloud and protocol")
        "model_kind": federation_kind(store) if loaded else None,
        "backbone_sha256": store.meta.get("backbone_sha256"),
        "architecture_sha256": store.meta.get("architecture_sha256"),
        "updates_this_round": sorted(received) if last and last.status == "open" else [],
        "updates_duplicate": counters.get("updates_duplicate", 0),
        "twin_rejected": {
            k.split(".", 1)[1]: v for k, v in counters.items() if k.startswith("twin_rejected.")
        },
        # every message handled, by what became of it: accepted, duplicate, rejected, twin,
        # twin_rejected, ignored (their sum is the number of messages taken from the broker)
        "messages": {
            k.split(".", 1)[1]: v for k, v in counters.items() if k.startswith("messages.")
        },
        "clusters": clusters,
        "splits": loaded[0].extra.get("splits", []) if loaded else [],  # CFL's, in order
    }


def status_table(report: dict) -> str:
    """A human-readable summary of ``status_report``."""
    lines = [
        f"federation {report['federation']} ({report['model_kind'] or '-'})  "
        f"strategy {report['strategy']}  "
        f"round {report['round']} ({report['round_status']}, deadline {report['deadline'] or '-'})  "
        f"completed {report['rounds_completed']}",
        "global versions: "
        + (", ".join(f"{c}={v}" for c, v in sorted(report["global_versions"].items())) or "-"),
        "updates this round: " + (", ".join(report["updates_this_round"]) or "-"),
        "rejected: "
        + (", ".join(f"{r}={n}" for r, n in sorted(report["updates_rejected"].items())) or "none")
        + f"  duplicates ignored: {report['updates_duplicate']}",
        "",
    ]
    header = (
        "site",
        "online",
        "status",
        "cluster",
        "model version",
        "last seen",
        "stored",
        "inferred",
        "feature shift",
    )
    rows = [header]
    for site, info in report["sites"].items():
        counts = info["counts"]
        rows.append(
            (
                site + ("" if info["enrolled"] else " (not enrolled)"),
                "yes" if info["online"] else "no",
                info["status"],
                info["cluster"] or "-",
                info["model_version"] or "-",
                info["last_seen"] or "-",
                str(counts.get("instances_stored", "-")),
                str(counts.get("series_inferred", "-")),
                shift_text(info),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines += [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    return "\n".join(lines)


def shift_text(info: dict) -> str:
    """A site's feature shift for a person: "2.4 (features.10 max, 3 sites)", or why none."""
    shift = info.get("feature_shift")
    if shift:
        return f"{shift['value']:g} ({shift['block']}, {shift['sites']} sites)"
    stats = info.get("feature_stats")
    return f"- ({stats['slices']} slices, no comparable site)" if stats else "-"
