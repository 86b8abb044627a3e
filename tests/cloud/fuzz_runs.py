"""Run generated hostile traffic against the cloud: in process (the round loop) or a real serve.

Both runs judge the same cases in the same order, so their counts must agree
exactly. The cloud's quorum is one more than the enrolled fuzz sites, so no
round closes during the fuzz and each case's fate depends only on the cases
before it; afterwards a ``closer`` site is enrolled and its update closes the
round, so the head that every accepted fuzz update went into is checked too.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field

import numpy as np

from ftlct.cloud.round_coordinator import RoundCoordinator
from ftlct.cloud.settings import CloudSettings, LimitsSettings
from ftlct.cloud.state import StateStore
from ftlct.cloud.state.inbox import InboxMessage
from ftlct.cloud.status_report import status_report
from ftlct.cloud.strategies import make_strategy
from ftlct.protocol import exchange
from ftlct.protocol.identity import Identity, load_or_create_identity
from tests.cloud.envelope_fuzz import EnvelopeFuzzer, FuzzCase, new_identity
from tests.cloud.harness import FED

FUZZ_SITES = 8
LIMITS = {"max_update_bytes": 200_000, "max_delta_norm": 20.0}
# refusals raised after the signature and the topic were checked: the site is told
ATTRIBUTABLE = {
    "replay",
    "wrong_round",
    "wrong_cluster",
    "wrong_base_version",
    "already_submitted",
    "shape_mismatch",
    "bad_dtype",
    "bad_samples",
    "non_finite",
    "norm_bound",
}


@dataclass
class FuzzTally:
    by_family: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))

    def add(self, case: FuzzCase, outcome: str) -> None:
        self.by_family[case.family][outcome] += 1

    @property
    def cases(self) -> int:
        return sum(sum(c.values()) for c in self.by_family.values())

    def outcomes(self) -> Counter:
        total: Counter = Counter()
        for counts in self.by_family.values():
            total.update(counts)
        return total

    def receipts_expected(self) -> int:
        return sum(
            n
            for outcome, n in self.outcomes().items()
            if outcome in ("accepted", "duplicate")
            or (outcome.startswith("rejected:") and outcome.split(":", 1)[1] in ATTRIBUTABLE)
        )

    def markdown(self) -> str:
        """Cases by family and what became of them (for docs/reliability.md)."""
        outcomes = sorted(self.outcomes(), key=lambda o: (-self.outcomes()[o], o))
        lines = ["| family | cases | outcomes |", "| --- | ---: | --- |"]
        for family, counts in sorted(self.by_family.items()):
            detail = ", ".join(f"{o} {counts[o]}" for o in outcomes if counts[o])
            lines.append(f"| {family} | {sum(counts.values())} | {detail} |")
        lines.append(f"| **all** | **{self.cases}** | |")
        return "\n".join(lines)


def fuzz_sites(count: int = FUZZ_SITES) -> list[Identity]:
    return [new_identity(f"f{i}") for i in range(count)]


def fuzz_cases(sites: list[Identity], count: int, seed: int) -> list[FuzzCase]:
    fuzzer = EnvelopeFuzzer(FED, sites, seed=seed, max_update_bytes=LIMITS["max_update_bytes"])
    return list(fuzzer.cases(count))


def cloud_settings(tmp_path, sites: list[Identity]) -> CloudSettings:
    return CloudSettings(
        federation=FED,
        strategy="fedavg",
        min_sites=len(sites) + 1,
        round_timeout=3.0,
        state_dir=str(tmp_path / "state"),
        limits=LimitsSettings(**LIMITS),
    )


@dataclass
class InProcessRun:
    tally: FuzzTally
    status: dict
    receipts: list
    head: dict[str, np.ndarray]


def run_in_process(tmp_path, model, sites: list[Identity], cases: list[FuzzCase]) -> InProcessRun:
    """The round loop as ``ftl-cloud serve`` drives it (inbox batches), with a hand-held clock."""
    settings = cloud_settings(tmp_path, sites)
    store = StateStore.open(settings.state_dir)
    with store.transaction():
        for site in sites:
            store.sites.enroll(site.name, site.public_b64)
    cloud = load_or_create_identity(tmp_path / "cloud-keys", "cloud")
    published: list[tuple[str, bytes, bool]] = []
    now = [1000.0]
    coordinator = RoundCoordinator(
        settings,
        store,
        make_strategy("fedavg"),
        cloud,
        lambda topic, payload, retain: published.append((topic, payload, retain)),
        clock=lambda: now[0],
    )
    coordinator.initialise(model)
    tally = FuzzTally()
    for start in range(0, len(cases), 256):
        batch = cases[start : start + 256]
        messages = [
            InboxMessage(start + i + 1, c.topic, c.payload, c.retained) for i, c in enumerate(batch)
        ]
        for case, outcome in zip(batch, coordinator.on_inbox(messages), strict=True):
            tally.add(case, outcome)
    status = status_report(store)
    receipts = [
        exchange.open_receipt(p, cloud.public_b64, FED)
        for t, p, _ in published
        if "/receipts/" in t
    ]
    closer = new_identity("closer")
    store.sites.enroll(closer.name, closer.public_b64)
    closing = EnvelopeFuzzer(FED, [closer], seed=1).update(closer)
    assert coordinator.on_message(coordinator.topics.updates("closer"), closing) == "accepted"
    now[0] += settings.round_timeout + 1
    coordinator.tick()
    assert store.rounds.completed() == 1, status_report(store)
    head = coordinator.current.weights("global")
    store.close()
    return InProcessRun(tally, status, receipts, head)
