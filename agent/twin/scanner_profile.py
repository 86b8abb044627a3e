"""The scanner profile of the twin, aggregated over series from indexed header fields.

Only device-level values (manufacturer, model, reconstruction kernel, kVp,
slice thickness) and counts per series ever leave this module; no UID, date
or patient field is read. Names are never forwarded as written: each maps onto
the closed vocabulary of ``device_vocabulary`` (unknown ones count as
``other``), and the 16 most frequent are kept.
"""

from __future__ import annotations

import re
import statistics
import time
from collections import Counter

from ftlct.agent.series.series_index import SeriesIndex
from ftlct.agent.twin.device_vocabulary import kernel, model, vendor
from ftlct.protocol.twin_state import ScannerProfile

MAX_NAMES = 16
DAY_S = 86400.0
WINDOW_DAYS = 7.0


def _top(counter: Counter) -> dict[str, int]:
    return dict(counter.most_common(MAX_NAMES))


def _median(values: list[float]) -> float:
    return float(statistics.median(values)) if values else 0.0


def scanner_profile(series: SeriesIndex, now: float | None = None) -> ScannerProfile:
    now = time.time() if now is None else now
    rows = series.with_devices()
    manufacturers, models, kernels, modalities = Counter(), Counter(), Counter(), Counter()
    kvps, thicknesses, slices = [], [], []
    recent = 0
    for row in rows:
        if name := vendor(row["manufacturer"]):
            manufacturers[name] += 1
        if name := model(row["model_name"]):
            models[name] += 1
        if name := kernel(row["kernel"]):
            kernels[name] += 1
        modality = (row["modality"] or "").strip().upper()
        if re.fullmatch(r"[A-Z]{2,4}", modality):
            modalities[modality] += 1
        if row["kvp"] is not None and row["kvp"] > 0:
            kvps.append(row["kvp"])
        if row["slice_thickness_mm"] is not None and row["slice_thickness_mm"] > 0:
            thicknesses.append(row["slice_thickness_mm"])
        slices.append(row["n_instances"])
        if now - row["first_received_at"] <= WINDOW_DAYS * DAY_S:
            recent += 1
    first = min((row["first_received_at"] for row in rows), default=now)
    days = min(WINDOW_DAYS, max((now - first) / DAY_S, 1.0))
    return ScannerProfile(
        manufacturer=manufacturers.most_common(1)[0][0] if manufacturers else "",
        model_name=models.most_common(1)[0][0] if models else "",
        modalities=_top(modalities),
        series_per_day=round(recent / days, 3),
        median_slices_per_series=_median(slices),
        median_slice_thickness_mm=_median(thicknesses),
        median_kvp=_median(kvps),
        manufacturers=_top(manufacturers),
        models=_top(models),
        kernels=_top(kernels),
    )
