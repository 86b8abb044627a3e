"""``ftl-bench levers``: what each FTL design choice is worth, one lever at a time.

Each lever is a change to the settings; it is scored by the ``central`` and
``ftl`` macro-F1 on one split, with everything else as in the default run.
The ``base`` row is the plainest FTL (linear head, one AdamW epoch at lr 1e-3,
no augmentation); each following row changes one thing from the *default*
configuration (or, for the first rows, builds the default up step by step).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ftlct.bench.settings import BenchSettings


@dataclass(frozen=True)
class Lever:
    name: str
    what: str
    changes: dict  # dotted setting -> value, applied to a fresh BenchSettings


BASE = {"ftl.lr": 1e-3, "ftl.epochs": 1, "ftl.jitter_views": 0}
LEVERS = (
    Lever(
        "base",
        "linear head, logit-adjusted loss, AdamW lr 1e-3, 1 local epoch, no augmentation",
        BASE,
    ),
    Lever("lr-epochs", "base + lr 3e-3, 2 local epochs", {"ftl.jitter_views": 0}),
    Lever("default", "lr-epochs + 3 acquisition-jittered views per image (the default run)", {}),
    Lever("more-epochs", "default with 5 local epochs", {"ftl.epochs": 5}),
    Lever("fedprox", "default + FedProx mu 0.01", {"ftl.fedprox_mu": 0.01}),
    Lever(
        "mlp-head",
        "default with an MLP head (256 hidden, dropout 0.3)",
        {"ftl.head": "mlp", "ftl.head_dropout": 0.3},
    ),
    Lever(
        "grey-windows",
        "default with 3 grey windows as channels (full, dark/lung, mid)",
        {"grey_windows": "full:0.5:1.0,dark:0.35:0.7,mid:0.55:0.5"},
    ),
    Lever(
        "final-layer",
        "default with the earlier embedding: features.18 mean-pooled only",
        {"ftl.taps": "18", "ftl.pooling": "mean"},
    ),
    Lever(
        "lite0",
        "default with the EfficientNet-Lite0 backbone (its multi-layer embedding)",
        {"ftl.backbone": "efficientnet_lite0"},
    ),
    Lever(
        "no-class-weights",
        "default without any prior correction (plain cross-entropy at every site)",
        {"ftl.class_weighting": "none"},
    ),
    Lever(
        "balanced-weights",
        "default with balanced class weights (n / (classes x n_c)) instead of logit adjustment",
        {"ftl.class_weighting": "balanced"},
    ),
    Lever(
        "server-momentum",
        "default + FedAvgM at the cloud (server momentum 0.9, server lr 0.5)",
        {"ftl.server_momentum": 0.9, "ftl.server_lr": 0.5},
    ),
    Lever(
        "raw-features",
        "default without the moments round: the head trained on the raw embedding",
        {"ftl.standardise_features": False},
    ),
    Lever("more-rounds", "default with 60 rounds (an FTL round costs ~0.1 s)", {"rounds": 60}),
    Lever("no-scanners", "ablation: every site the reference scanner", {"scanners": "none"}),
    Lever("harsh-scanners", "ablation: the harsh scanner set", {"scanners": "harsh"}),
)


def apply_changes(settings: BenchSettings, changes: dict) -> BenchSettings:
    for dotted, value in changes.items():
        target = settings
        *path, name = dotted.split(".")
        for part in path:
            target = getattr(target, part)
        if not hasattr(target, name):
            raise ValueError(f"unknown setting {dotted}")
        setattr(target, name, value)
    settings.check()
    return settings


def merge_levers(previous: dict | None, new: dict) -> dict:
    """``new``'s rows replace same-named rows of ``previous`` (same seed and rounds), order of LEVERS."""
    if not previous or (previous.get("seed"), previous.get("rounds")) != (
        new["seed"],
        new["rounds"],
    ):
        return new
    rows = {row["lever"]: row for row in previous["levers"]}
    rows.update({row["lever"]: row for row in new["levers"]})
    order = [lever.name for lever in LEVERS]
    merged = sorted(
        rows.values(), key=lambda r: order.index(r["lever"]) if r["lever"] in order else 99
    )
    return {
        **new,
        "levers": merged,
        "commands": sorted({*previous.get("commands", [previous["command"]]), new["command"]}),
    }


def run_levers(data, out, seed, rounds, names, cache_dir, threads, reporter, command) -> dict:
    from ftlct.bench.experiment import make_plan, prepare_views, run_method

    rows = []
    for lever in LEVERS:
        if names and lever.name not in names:
            continue
        settings = BenchSettings(
            data=str(data),
            out=str(out),
            seed=seed,
            rounds=rounds,  # a lever may change it (more-rounds)
            methods="ftl,central",
            cache_dir=str(cache_dir or Path(out) / "cache"),
            threads=threads,
        )
        apply_changes(settings, lever.changes)
        reporter.note(f"lever {lever.name}: {lever.what}")
        started = time.perf_counter()
        plan = make_plan(settings, reporter)
        prepare_views(settings, plan, reporter)
        row = {"lever": lever.name, "what": lever.what, "changes": lever.changes}
        for method in ("central", "ftl"):
            run = run_method(method, settings, plan, reporter)
            f1s = [h.f1 for h in run.history]
            row[method] = {
                "f1": round(run.final.f1, 4),
                "accuracy": round(run.final.accuracy, 4),
                "f1_last5_mean": round(float(np.mean(f1s[-5:])), 4),
                "elapsed_s": round(run.history[-1].elapsed_s, 1),
                "bytes_up_per_round": run.bytes_up_per_round,
            }
        row["wall_s"] = round(time.perf_counter() - started, 1)
        rows.append(row)
    return {"command": command, "seed": seed, "rounds": rounds, "data": str(data), "levers": rows}


def levers_markdown(document: dict) -> str:
    commands = document.get("commands", [document["command"]])
    lines = [
        f"Scored on seed {document['seed']}'s split, {document['rounds']} rounds unless the lever "
        f"says otherwise ({'; '.join(f'`{c}`' for c in commands)}). F1 = macro-F1 after the last "
        'round; "last 5" = mean of the last five rounds (less noisy). One split: differences '
        "below ~0.05 are within split-to-split noise.",
        "",
        "| lever | change | central F1 | FTL F1 | FTL F1 last 5 | FTL bytes/round |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for row in document["levers"]:
        ftl, central = row["ftl"], row["central"]
        size = ftl["bytes_up_per_round"]
        lines.append(
            f"| {row['lever']} | {row['what']} | {central['f1']:.3f} | {ftl['f1']:.3f} "
            f"| {ftl['f1_last5_mean']:.3f} | {size / 1024:.0f} KiB |"
        )
    return "\n".join(lines)
