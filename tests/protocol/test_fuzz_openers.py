"""Fuzz what the agent and the cloud call on received bytes: only ProtocolError ever comes out.

``open_round``, ``open_global_model``, ``open_receipt``, ``open_update`` and
``open_twin_state`` meet thousands of mutations of valid envelopes (half of
the changed headers re-signed with the right key, so they reach the schema
checks); each must return a checked message or raise ``ProtocolError`` with a
reason, never anything else (a RecursionError, TypeError or OverflowError here
is a message that stops a process).
"""

from __future__ import annotations

import os
import random
from collections import Counter

import numpy as np
import pytest

from ftlct.protocol import exchange
from ftlct.protocol.errors import ProtocolError
from ftlct.protocol.messages import GlobalModel, RoundAnnouncement
from ftlct.protocol.receipt import Receipt
from ftlct.protocol.twin_state import TwinState
from tests.support.envelope_mutations import EnvelopeMutator

pytestmark = pytest.mark.reliability
FED = "fed"
CASES_PER_OPENER = 1500


def _valid(keys):
    cloud, site = keys["cloud"], keys["a"]
    head = {"dense.0.weight": np.ones((2, 4), np.float32), "dense.0.bias": np.zeros(2, np.float32)}
    model = GlobalModel("global", "v1", 1, ["normal", "abnormal"], "b" * 64, head)
    announcement = RoundAnnouncement(2, "ftl", 1e9, 1e9 - 60, {"global": "v1"}, training={"lr": 1})
    update = exchange.build_update(
        site, FED, round=2, base_version="v1", cluster="global", n_samples=5, delta=head,
        codec="int8",
    )  # fmt: skip
    lookup = {"site-a": site.public_b64}.get
    return {
        "round": (
            exchange.build_round(cloud, FED, announcement),
            cloud,
            lambda d: exchange.open_round(d, cloud.public_b64, FED),
        ),
        "global_model": (
            exchange.build_global_model(cloud, FED, model),
            cloud,
            lambda d: exchange.open_global_model(d, cloud.public_b64, FED, labels=model.labels),
        ),
        "receipt": (
            exchange.build_receipt(cloud, FED, Receipt("site-a", "u-12345678", 2, "accepted")),
            cloud,
            lambda d: exchange.open_receipt(d, cloud.public_b64, FED, site="site-a"),
        ),
        "site_update": (update, site, lambda d: exchange.open_update(d, lookup, FED)),
        "twin_state": (
            exchange.build_twin_state(site, FED, TwinState(status="idle")),
            site,
            lambda d: exchange.open_twin_state(d, lookup, FED),
        ),
    }


@pytest.mark.parametrize("kind", ["round", "global_model", "receipt", "site_update", "twin_state"])
def test_mutated_envelopes_open_or_raise_a_protocol_error_only(keys, kind):
    data, signer, opener = _valid(keys)[kind]
    opener(data)  # the valid one opens
    rng = random.Random(kind)
    mutate = EnvelopeMutator(rng)
    mutations = [
        mutate.truncate,
        mutate.flip_bits,
        lambda d: mutate.swap_value(d, signer),
        lambda d: mutate.swap_value(d, None),
        mutate.nest,
        mutate.literal,
        mutate.lie_about_length,
    ]
    outcomes: Counter = Counter()
    for _ in range(CASES_PER_OPENER):
        mutated = rng.choice(mutations)(data)
        try:
            opener(mutated)
            outcomes["opened"] += 1
        except ProtocolError as exc:
            outcomes[exc.reason] += 1
    assert sum(outcomes.values()) == CASES_PER_OPENER
    assert outcomes["opened"] < CASES_PER_OPENER // 2, outcomes  # the mutations do bite
    if os.environ.get("FTLCT_FUZZ_REPORT"):
        detail = ", ".join(f"{reason} {n}" for reason, n in outcomes.most_common())
        with open(os.environ["FTLCT_FUZZ_REPORT"], "a") as handle:
            handle.write(f"| {kind} | {CASES_PER_OPENER} | {detail} |\n")
