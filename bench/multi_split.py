"""``ftl-bench federation --splits N``: the experiment on N splits and their statistics.

Split k uses seed ``seed + k``: its own test split, site partition and
training seed (scanners are the sites' and stay). Each split's documents go
to ``OUT/splits/seed-S/`` (``results.json``, ``split.json``); the top-level
``results.json`` keeps DESIGN.md's schema with every method's figures
averaged over the splits (confusion matrices summed) and adds a
``multi_split`` section: per method the mean, standard error and 95%
interval of every metric, the paired difference of each FTL method minus
each other method, and the per-split values behind them.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from ftlct.bench.split_stats import paired_difference, rounded, summary

# metrics summarised per method (those a method lacks are skipped)
METRICS = (
    "f1",
    "accuracy",
    "precision",
    "recall",
    "f1_last",
    "f1_best_validated",
    "convergence_time_s",
    "time_to_target_s",
    "rounds_to_target",
    "bytes_up_per_round",
)
MEAN_KEYS = (
    "accuracy",
    "precision",
    "recall",
    "f1",
    "f1_best_validated",
    "bytes_up_per_round",
    "feature_extraction_s",
)


def split_seeds(first: int, n: int) -> list[int]:
    if n < 1:
        raise ValueError(f"--splits must be >= 1, got {n}")
    return [first + k for k in range(n)]


def is_ftl(method: str) -> bool:
    return method == "ftl" or method.startswith("ftl_")


def _mean(values):
    present = [v for v in values if v is not None]
    return float(np.mean(present)) if present else None


def _mean_history(histories: list[list[dict]]) -> list[dict]:
    rounds = min((len(h) for h in histories), default=0)
    return [
        {
            "round": r + 1,
            **{
                key: round(float(np.mean([h[r][key] for h in histories])), 6)
                for key in ("f1", "accuracy", "elapsed_s")
            },
        }
        for r in range(rounds)
    ]


def _mean_method(runs: list[dict]) -> dict:
    """One method's DESIGN.md figures as the mean over splits (confusion matrices summed)."""
    out = {key: _mean([r.get(key) for r in runs]) for key in MEAN_KEYS if key in runs[0]}
    out["confusion_matrix"] = np.sum([r["confusion_matrix"] for r in runs], axis=0).tolist()
    for key in ("convergence_time_s", "convergence_round", "time_to_target_s", "rounds_to_target"):
        out[key] = _mean([r.get(key) for r in runs])
    out["reached_target"] = sum(1 for r in runs if r.get("rounds_to_target") is not None)
    out["history"] = _mean_history([r["history"] for r in runs])
    out["note"] = f"mean over {len(runs)} splits; confusion matrix summed over them"
    return {k: round(v, 6) if isinstance(v, float) else v for k, v in out.items()}


def combine_splits(documents: list[dict], chosen_on: str = "") -> dict:
    """The top-level ``results.json`` of a multi-split run, from each split's ``results.json``."""
    if not documents:
        raise ValueError("no split results to combine")
    methods = [m for m in documents[0]["methods"] if all(m in d["methods"] for d in documents)]
    seeds = [d["seed"] for d in documents]
    per_split = [
        {
            "seed": d["seed"],
            "n_test": d["dataset"]["n_test"],
            "methods": {
                m: {k: d["methods"][m].get(k) for k in METRICS if k in d["methods"][m]}
                for m in methods
            },
            "history_f1": {m: [h["f1"] for h in d["methods"][m]["history"]] for m in methods},
        }
        for d in documents
    ]

    def column(method: str, metric: str) -> list:
        return [s["methods"][method].get(metric) for s in per_split]

    stats = {
        m: {
            metric: rounded(summary(column(m, metric)))
            for metric in METRICS
            if metric in per_split[0]["methods"][m]
        }
        for m in methods
    }
    paired = {}
    for a in filter(is_ftl, methods):
        for b in methods:
            if b == a:
                continue
            paired[f"{a} - {b}"] = {
                "a": a,
                "b": b,
                **{
                    metric: rounded(paired_difference(column(a, metric), column(b, metric)))
                    for metric in METRICS
                    if metric in stats[a] and metric in stats[b]
                },
            }
    first = documents[0]
    combined = {
        **{k: v for k, v in first.items() if k not in ("methods", "site_details", "run")},
        "seed": seeds[0],
        "methods": {m: _mean_method([d["methods"][m] for d in documents]) for m in methods},
        "site_details": first.get("site_details", []),
        "run": {
            **first["run"],
            "wall_s": round(sum(d["run"]["wall_s"] for d in documents), 1),
        },
        "multi_split": {
            "n_splits": len(documents),
            "seeds": seeds,
            "chosen_on": chosen_on,
            "split_dirs": [f"splits/seed-{s}" for s in seeds],
            "summary": stats,
            "paired": paired,
            "per_split": per_split,
        },
    }
    combined["dataset"] = {
        **first["dataset"],
        "n_test": round(float(np.mean([d["dataset"]["n_test"] for d in documents])), 1),
        "note": "n_test, n_train and test views vary by split; the mean n_test is shown",
    }
    target = [d.get("target_f1") for d in documents]
    combined["target_f1"] = _mean(target)
    return combined


# settings that do not change a split's figures: a finished split run with other values is reused
NOT_RESULTS = ("out", "cache_dir", "threads", "broker", "mqtt_timeout_s", "chosen_on", "splits")


def _comparable(settings_json: dict) -> dict:
    return {k: v for k, v in settings_json.items() if k not in NOT_RESULTS}


def finished_split(folder: Path, settings) -> dict | None:
    """A split's ``results.json`` written by a run with the same settings, else None.

    An unreadable, unfinished or differently configured document is run again
    (never mixed in), so an interrupted run loses the split in progress at most.
    """
    path = folder / "results.json"
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(document, dict) or not isinstance(document.get("settings"), dict):
        return None
    if _comparable(document["settings"]) != _comparable(settings.to_json()):
        return None
    if not (folder / "split.json").is_file():
        return None
    return document


def run_splits(settings, reporter, out: Path, write_json) -> dict:
    """Every split in turn (documents written per split as they finish); the combined results.

    A split whose folder already holds results of the same settings is reused.
    """
    from ftlct.bench.experiment import run_experiment

    documents = []
    seeds = split_seeds(settings.seed, settings.splits)
    for index, seed in enumerate(seeds):
        one = dataclasses.replace(settings, seed=seed, splits=1)
        folder = out / "splits" / f"seed-{seed}"
        reused = finished_split(folder, one)
        if reused is not None:
            reporter.note(f"split {index + 1}/{len(seeds)}: seed {seed} (reused {folder})")
            documents.append(reused)
            continue
        reporter.note(f"split {index + 1}/{len(seeds)}: seed {seed}")
        experiment = run_experiment(one, reporter)
        folder.mkdir(parents=True, exist_ok=True)
        # split.json first: results.json is what marks the split as finished
        write_json(folder / "split.json", experiment.split)
        write_json(folder / "results.json", experiment.results)
        documents.append(experiment.results)
    return combine_splits(documents, settings.chosen_on)
