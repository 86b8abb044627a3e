"""What the dashboard shows, read from the state dir without writing to it.

``read_snapshot`` is ``ftl-cloud status --json`` (``status_report``) plus, per
site, the whole twin state, and the round history with the sites' local
metrics averaged per round (weighted by their sample counts).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from ftlct.cloud.state import StateStore
from ftlct.cloud.status_report import iso, status_report

# local metrics an update carries (agent/training): F1 of the site's new head and of the
# global head it started from, on the site's held-out series; the last epoch's loss
CURVES = {"f1": "val_f1", "global_f1": "global_val_f1", "loss": "train_loss"}


class SnapshotError(RuntimeError):
    """The state dir exists but cannot be read now (being created, locked, damaged)."""


def read_snapshot(state_dir: str | Path) -> dict | None:
    """The dashboard's data; None when the cloud has not created its state yet."""
    store = StateStore.open_read_only(state_dir)
    if store is None:
        return None
    try:
        # one snapshot of the WAL, so a round the loop closes between two of the reads
        # below cannot show as closed and still open at once
        with store.snapshot():
            report = status_report(store)
            twins = store.twins.all()
            history = round_history(store)
    except (sqlite3.Error, KeyError, ValueError) as exc:  # mid-write, damaged, other schema
        raise SnapshotError(f"cloud state in {state_dir} not readable: {exc}") from exc
    finally:
        store.close()
    for site, info in report["sites"].items():
        twin = twins.get(site)
        info["twin"] = twin["state"] if twin else None
        info["last_seen_ts"] = twin["last_seen"] if twin else None
    report["history"] = [_summary(entry) for entry in history]
    return report


def round_history(store: StateStore) -> list[dict]:
    """Every round with its updates' sites, sample counts and metrics, and its refusals."""
    history = []
    for row in store.rounds.history():
        history.append(
            {
                "round": row.round,
                "status": row.status,
                "strategy": row.strategy,
                "opened_at": row.opened_at,
                "closed_at": row.closed_at,
                "extensions": row.extensions,
                "updates": store.updates.records_of_round(row.round),
                "rejected": store.rejections.counts_of_round(row.round),
            }
        )
    return history


def _summary(entry: dict) -> dict:
    updates = entry["updates"]
    curves = {}
    for name, key in CURVES.items():
        pairs = [
            (u["metrics"][key], u["n_samples"])
            for u in updates
            if isinstance(u["metrics"].get(key), int | float) and u["n_samples"] > 0
        ]
        total = sum(n for _, n in pairs)
        curves[name] = sum(v * n for v, n in pairs) / total if total else None
    return {
        "round": entry["round"],
        "status": entry["status"],
        "strategy": entry["strategy"],
        "opened_at": iso(entry["opened_at"]),
        "closed_at": iso(entry["closed_at"]),
        "duration_s": (entry["closed_at"] - entry["opened_at"]) if entry["closed_at"] else None,
        "extensions": entry["extensions"],
        "sites": [u["site"] for u in updates],
        "clusters": sorted({u["cluster"] for u in updates}),
        "n_samples": sum(u["n_samples"] for u in updates),
        "rejected": entry["rejected"],
        **curves,
    }
