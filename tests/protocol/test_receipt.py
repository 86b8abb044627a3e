"""The cloud's signed receipt for one site update: what a site may act on, and what it refuses."""

from __future__ import annotations

import pytest

from ftlct.protocol import exchange
from ftlct.protocol.envelope import seal
from ftlct.protocol.errors import ProtocolError
from ftlct.protocol.receipt import Receipt
from tests.support.refusals import reason_of

FED = "fed"


@pytest.mark.parametrize(
    "receipt",
    [
        Receipt("site-a", "u-12345678", 3, "accepted"),
        Receipt("site-a", "u-12345678", 3, "duplicate"),
        Receipt("site-a", "u-12345678", 3, "rejected", "wrong_round"),
    ],
)
def test_every_outcome_round_trips_to_the_site_it_names(keys, receipt):
    data = exchange.build_receipt(keys["cloud"], FED, receipt)
    assert exchange.peek(data).kind == "receipt" and len(data) < 4096
    assert exchange.open_receipt(data, keys["cloud"].public_b64, FED, site="site-a") == receipt


def test_a_site_refuses_receipts_not_signed_by_the_cloud_or_not_for_it(keys):
    receipt = Receipt("site-a", "u-12345678", 1, "accepted")
    forged = seal("receipt", FED, receipt.to_payload(), keys["a"])  # a site signing for the cloud
    cloud_key = keys["cloud"].public_b64
    assert reason_of(exchange.open_receipt, forged, cloud_key, FED) == "bad_signature"
    real = exchange.build_receipt(keys["cloud"], FED, receipt)
    assert reason_of(exchange.open_receipt, real, cloud_key, FED, site="site-b") == "wrong_site"
    assert reason_of(exchange.open_receipt, real, cloud_key, "other") == "wrong_federation"
    update = exchange.build_update(
        keys["a"], FED, round=1, base_version="v", cluster="global", n_samples=1, delta={}
    )
    assert reason_of(exchange.open_receipt, update, cloud_key, FED) == "wrong_kind"


@pytest.mark.parametrize(
    "changes",
    [
        {"outcome": "maybe"},
        {"outcome": "rejected", "reason": ""},  # a rejection says why
        {"outcome": "accepted", "reason": "norm_bound"},  # and only a rejection has a reason
        {"reason": "Not A Code", "outcome": "rejected"},
        {"round": -1},
        {"round": True},
        {"update_id": "short"},
        {"site": "a/b"},
        {"extra": 1},
    ],
)
def test_malformed_receipts_are_refused(keys, changes):
    payload = {**Receipt("site-a", "u-12345678", 1, "accepted").to_payload(), **changes}
    data = seal("receipt", FED, payload, keys["cloud"])
    assert reason_of(exchange.open_receipt, data, keys["cloud"].public_b64, FED) == "malformed"
    with pytest.raises(ProtocolError):
        Receipt.from_payload(payload)


def test_the_cloud_cannot_build_a_receipt_a_site_would_refuse(keys):
    with pytest.raises(ProtocolError, match="reason"):
        exchange.build_receipt(keys["cloud"], FED, Receipt("site-a", "u-12345678", 1, "rejected"))
