"""``make demo``: a local federation of real processes on embedded defaults.

mosquitto, ``ftl-cloud serve`` and two ``ftl-agent serve`` start on loopback.
Each agent receives its own CT studies over DICOM (real covid-ct slices as
Secondary Capture where ``../shared`` is present, synthetic CT phantoms
otherwise), classifies them, gets its confirmed labels by ``ftl-agent label
import``, and trains the head on its own embeddings when the cloud opens a
round. The cloud aggregates the head deltas (FTL) for a few rounds; then every
agent classifies a held-out test set that no site trained on, with the newest
global head. Nothing but head deltas and de-identified twin states crosses MQTT.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from ftlct.bench.demo_data import covid_ct_split, labels_csv, phantom_split
from ftlct.bench.local_federation import (
    FederationError,
    LocalFederation,
    agent_cli,
    remove_tree,
    wait_until,
)
from ftlct.export.metrics import accuracy, macro_f1
from ftlct.export.model_dir import ModelDir, ModelDirError
from ftlct.export.weights import REPO_ROOT

COVID_CT = REPO_ROOT.parent / "shared" / "data" / "covid-ct"
LABELS = ["normal", "abnormal"]
STALL_S = 300.0  # a round that long without progress means a site cannot train: say why


def _say(start: float, text: str) -> None:
    print(f"[{time.monotonic() - start:6.1f}s] {text}", flush=True)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="make demo", description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=REPO_ROOT / "out" / "demo")
    parser.add_argument("--model", type=Path, default=REPO_ROOT / "models" / "default")
    parser.add_argument("--sites", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--per-site", type=int, default=80, help="training studies per site")
    parser.add_argument("--test", type=int, default=80, help="held-out test studies")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--phantoms", action="store_true", help="synthetic CT even if covid-ct is there"
    )
    return parser.parse_args(argv)


def _score(agent, studies) -> dict:
    rows = {r["series_uid"]: r for r in agent.results()}
    truth = np.array([LABELS.index(s.label) for s in studies])
    predicted = np.array([LABELS.index(rows[s.series_uid]["label"]) for s in studies])
    versions = {rows[s.series_uid]["model_version"] for s in studies}
    return {
        "accuracy": accuracy(truth, predicted),
        "macro_f1": macro_f1(truth, predicted, len(LABELS)),
        "versions": versions,
    }


def _training_notes(fed: LocalFederation) -> str:
    notes = []
    for site, agent in fed.agents.items():
        last = agent.status().get("federation", {}).get("last_training") or {}
        notes.append(f"{site}: {last.get('outcome', 'no training yet')} {last.get('reason') or ''}")
    return "; ".join(n.strip() for n in notes)


def run(args: argparse.Namespace) -> int:
    start = time.monotonic()
    try:
        model = ModelDir.load(args.model)
    except ModelDirError as exc:
        print(f"demo: {exc} (run `make model`)", file=sys.stderr)
        return 1
    if model.labels != LABELS:
        print(
            f"demo: the model's labels are {model.labels}, the demo needs {LABELS}", file=sys.stderr
        )
        return 1
    sites = [f"hospital-{chr(ord('a') + i)}" for i in range(args.sites)]
    remove_tree(args.workdir)
    studies_dir = args.workdir / "studies"
    if COVID_CT.is_dir() and not args.phantoms:
        split = covid_ct_split(COVID_CT, studies_dir, sites, args.per_site, args.test, args.seed)
    else:
        split = phantom_split(studies_dir, sites, args.per_site // 4, args.test // 4, args.seed)
    _say(start, f"data: {split.source}")
    for site in sites:
        counts = {label: sum(s.label == label for s in split.train[site]) for label in LABELS}
        _say(start, f"  {site}: {len(split.train[site])} training studies {counts}")
    _say(start, f"  held-out test set: {len(split.test)} studies (no site trains on them)")

    with LocalFederation(args.workdir, args.model, sites, rounds=args.rounds) as fed:
        _say(start, f"broker {fed.broker_url}; cloud and {len(sites)} agents up")
        for site, agent in fed.agents.items():
            paths = [p for s in split.train[site] for p in s.paths]
            accepted = agent.send(paths)
            _say(start, f"{site}: C-STORE {accepted}/{len(paths)} instances accepted")
        for site, agent in fed.agents.items():
            n = len(split.train[site])
            wait_until(
                f"{site} to classify {n} series", lambda a=agent, n=n: len(a.results()) >= n, 600
            )
            csv_path = labels_csv(args.workdir / f"labels-{site}.csv", split.train[site])
            _say(
                start,
                f"{site}: {agent_cli('label', 'import', str(csv_path), '--data-dir', str(agent.data_dir)).strip()}",
            )

        _say(start, f"cloud runs {args.rounds} FTL rounds (agents train on their own embeddings)")
        seen, progress_at = 0, time.monotonic()
        while fed.cloud.alive():
            fed.check_alive()
            done = fed.cloud_status().get("rounds_completed", 0)
            if done != seen:
                seen, progress_at = done, time.monotonic()
                _say(start, f"  round {done} aggregated")
            if time.monotonic() - progress_at > STALL_S:
                raise FederationError(
                    f"no round completed in {STALL_S:.0f}s; {_training_notes(fed)}"
                )
            time.sleep(1)
        if fed.cloud.popen.returncode != 0:
            raise FederationError(f"cloud exited {fed.cloud.popen.returncode}:\n{fed.cloud.tail()}")
        cloud = fed.cloud_status()
        newest = cloud["global_versions"]["global"]
        _say(start, f"cloud finished: {cloud['rounds_completed']} rounds, global head {newest}")
        for site, agent in fed.agents.items():
            wait_until(
                f"{site} to install {newest}",
                lambda a=agent: a.status()["model_version"] == newest,
                120,
            )

        test_paths = [p for s in split.test for p in s.paths]
        for agent in fed.agents.values():
            agent.send(test_paths)
        print()
        print(
            f"{'site':<12} {'labels':>6} {'updates':>7} {'model':<28} {'test acc':>8} {'test F1':>7}"
        )
        for site, agent in fed.agents.items():
            n = len(split.train[site]) + len(split.test)
            wait_until(
                f"{site} to classify the test set", lambda a=agent, n=n: len(a.results()) >= n, 600
            )
            status, score = agent.status(), _score(agent, split.test)
            updates = status.get("federation", {}).get("updates_acknowledged", "?")
            print(
                f"{site:<12} {status['labels']:>6} {updates:>7} {status['model_version']:<28} "
                f"{score['accuracy']:>8.3f} {score['macro_f1']:>7.3f}"
            )
            if score["versions"] != {newest}:
                raise FederationError(
                    f"{site}: test results carry {score['versions']}, not {newest}"
                )
        print("(an untrained head scores 0.5 on every study; chance accuracy is about 0.5)\n")
        _say(start, f"done; logs and data dirs in {args.workdir}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    try:
        return run(args)
    except FederationError as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
