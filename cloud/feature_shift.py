"""Which site's scanner looks unlike the others' to the frozen backbone: the feature shift.

Each twin may carry feature statistics (``protocol.twin_state.FeatureStats``):
per embedding block, the mean over the site's recent slices of the block's
average value and its standard deviation over slices. A site's *feature
shift* is the largest, over blocks, of

    |site's block mean - fleet median of the block's means| / fleet spread

where the fleet spread of a block is the median over the sites of its
slice-to-slice standard deviation: the shift reads "this many typical slice
deviations away from the fleet". Only sites on the same backbone (sha256
prefix) with the same blocks are compared; with fewer than two such sites
there is no fleet and no shift.
"""

from __future__ import annotations

import statistics

MIN_SITES = 2


def feature_shifts(stats: dict[str, dict]) -> dict[str, dict | None]:
    """site -> its twin's stored ``feature_stats`` -> site -> ``{"value", "block", "sites"}``
    (None without a fleet to compare with or without a block of non-zero spread)."""
    groups: dict[tuple, list[str]] = {}
    for site, entry in stats.items():
        groups.setdefault(_group_key(entry), []).append(site)
    shifts: dict[str, dict | None] = {}
    for key, sites in groups.items():
        for site in sites:
            shifts[site] = None
        if len(sites) < MIN_SITES:
            continue
        names = key[1]
        fleet = {site: stats[site]["blocks"] for site in sites}
        for site in sites:
            shifts[site] = _shift(fleet, site, names)
    return shifts


def _group_key(entry: dict) -> tuple:
    blocks = entry.get("blocks") or []
    return entry.get("backbone"), tuple(f"{b['tap']} {b['pooling']}" for b in blocks)


def _shift(fleet: dict[str, list[dict]], site: str, names: tuple[str, ...]) -> dict | None:
    best: tuple[float, str] | None = None
    for index, name in enumerate(names):
        means = [blocks[index]["mean"] for blocks in fleet.values()]
        spread = statistics.median(blocks[index]["std"] for blocks in fleet.values())
        if spread <= 0:
            continue
        value = abs(fleet[site][index]["mean"] - statistics.median(means)) / spread
        if best is None or value > best[0]:
            best = (value, name)
    if best is None:
        return None
    return {"value": float(f"{best[0]:.3g}"), "block": best[1], "sites": len(fleet)}
