"""``results.json``: DESIGN.md's schema, plus the settings and the split that produced it.

Derived figures, per method (from its history of per-round test scores):

- ``convergence_time_s``: elapsed seconds at the first round whose F1 is
  within 0.01 of the method's best F1 (``convergence_round`` is that round);
- ``time_to_target_s`` / ``rounds_to_target``: the first round whose F1
  reaches 0.9 x the ``central`` reference's final F1; null if never;
- the headline accuracy/precision/recall/F1/confusion matrix are those of the
  model after the last round (not the best round: picking it would use the
  test split for model selection).
"""

from __future__ import annotations

import platform
from datetime import UTC, datetime

import numpy as np

from ftlct.bench.federation import MethodRun

CONVERGENCE_TOLERANCE = 0.01
TARGET_FRACTION = 0.9
RESULTS_FORMAT = "ftlct-bench-federation/1"


def convergence(history: list[dict]) -> tuple[float | None, int | None]:
    if not history:
        return None, None
    best = max(h["f1"] for h in history)
    first = next(h for h in history if h["f1"] >= best - CONVERGENCE_TOLERANCE)
    return first["elapsed_s"], first["round"]


def reach(history: list[dict], target: float | None) -> tuple[float | None, int | None]:
    if target is None:
        return None, None
    first = next((h for h in history if h["f1"] >= target), None)
    return (first["elapsed_s"], first["round"]) if first else (None, None)


def method_json(run: MethodRun, target: float | None, site_names: list[str]) -> dict:
    history = [h.to_json() for h in run.history]
    convergence_s, convergence_round = convergence(history)
    target_s, target_round = reach(history, target)
    return {
        **{k: round(v, 6) if isinstance(v, float) else v for k, v in run.final.to_json().items()},
        "convergence_time_s": convergence_s,
        "convergence_round": convergence_round,
        "time_to_target_s": target_s,
        "rounds_to_target": target_round,
        "bytes_up_per_round": run.bytes_up_per_round,
        "feature_extraction_s": round(run.start_s, 3),
        "best_round_f1": max((h["f1"] for h in history), default=None),
        "f1_last": round(run.final.f1, 6),
        "f1_best_validated": (
            round(run.best_validated.f1, 6) if run.best_validated is not None else None
        ),
        "best_validated_round": run.best_round,
        "per_site": [
            {"site": name, "f1": round(m.f1, 6), "accuracy": round(m.accuracy, 6)}
            for name, m in zip(site_names, run.per_site, strict=False)
        ],
        "history": history,
        **({"federation": run.extra} if run.extra else {}),
    }


def results_document(settings, plan, runs: dict[str, MethodRun], wall_s: float) -> dict:
    dataset, partition = plan.dataset, plan.partition
    central = runs.get("central")
    target = TARGET_FRACTION * central.final.f1 if central else None
    methods = {name: method_json(run, target, plan.site_names) for name, run in runs.items()}
    if "local" in methods:
        methods["local"]["bytes_up_per_round"] = 0  # nothing leaves a site
        methods["local"]["note"] = "metrics are the mean over sites of each site's own model"
    if "central" in methods:
        methods["central"]["bytes_up_total"] = int(
            sum(dataset.file(i).stat().st_size for i in partition.train)
        )
        methods["central"]["note"] = "pooled data: the training images themselves would move"
    labels = dataset.labels
    return {
        "format": RESULTS_FORMAT,
        "dataset": {
            "path": str(dataset.root),
            "classes": list(dataset.classes),
            "n": len(dataset),
            "n_train": len(partition.train),
            "n_test": len(partition.test),
            "n_groups": len(set(dataset.groups)),
            "test_class_counts": np.bincount(
                labels[partition.test], minlength=len(dataset.classes)
            ).tolist(),
            "test_views": int(len(partition.test) * len(plan.site_names)),
        },
        "sites": len(plan.site_names),
        "rounds": settings.rounds,
        "seed": settings.seed,
        "alpha": settings.alpha,
        "target_f1": round(target, 6) if target is not None else None,
        "methods": methods,
        "site_details": [
            {
                "site": name,
                "scanner": plan.profiles[s].to_json(),
                "scanner_summary": plan.profiles[s].describe(),
                "n_train": len(partition.sites[s]),
                "class_counts": np.bincount(
                    labels[partition.sites[s]], minlength=len(dataset.classes)
                ).tolist(),
            }
            for s, name in enumerate(plan.site_names)
        ],
        "settings": settings.to_json(),
        "model": {
            "backbone_sha256": plan.model.backbone_sha256,
            "input_size": plan.model.preprocessing.input_size,
            "preprocessing": plan.model.preprocessing.to_json(),
        },
        "run": {
            "wall_s": round(wall_s, 1),
            "finished": datetime.now(UTC).isoformat(timespec="seconds"),
            "python": platform.python_version(),
            "machine": platform.machine(),
            "cpus": _cpus(),
        },
    }


def split_document(plan) -> dict:
    """``split.json``: which files are test and which each site trained on (paths, no pixels)."""
    dataset, partition = plan.dataset, plan.partition
    return {
        "test": [{"path": dataset.paths[i], "group": dataset.groups[i]} for i in partition.test],
        "sites": {
            name: [
                {"path": dataset.paths[i], "group": dataset.groups[i]} for i in partition.sites[s]
            ]
            for s, name in enumerate(plan.site_names)
        },
    }


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 0
