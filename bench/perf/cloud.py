"""The cloud-scale figures (10,000 sites through one mosquitto) in ``perf.json``, from their own module.

That benchmark is written and owned apart from this package. ``ftl-bench perf``
takes its figures from, in order:

1. ``ftlct.bench.cloud_scale.run_cloud_scale(out: Path, quick: bool) -> dict``
   when that module exists (run in this process, so its figures come from
   this run);
2. ``OUT/cloud_scale.json`` when a separate run wrote one (stated as such);
3. otherwise the section says it was not measured.

A dict with a ``goals`` list (each ``{"goal", "value", "target", "met", "what"}``,
as ``measure.goal`` makes them) has those goals in ``perf.md``'s summary.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

MODULE = "ftlct.bench.cloud_scale"
ENTRY = "run_cloud_scale"


def cloud_section(out: Path, quick: bool) -> dict:
    try:
        module = importlib.import_module(MODULE)
    except ModuleNotFoundError as exc:
        if exc.name != MODULE:
            raise
        module = None
    if module is not None and hasattr(module, ENTRY):
        return {"source": f"{MODULE}.{ENTRY} (this run)", **getattr(module, ENTRY)(out, quick)}
    stored = out / "cloud_scale.json"
    if stored.is_file():
        return {"source": f"{stored} (a separate run)", **json.loads(stored.read_text())}
    return {"skipped": f"no {MODULE}.{ENTRY} and no {stored}: cloud scale not measured"}
