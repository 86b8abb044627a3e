"""Statistics updates (closed-form federations), moments updates (standardised FTL), validation
reports and the best-version note."""

from __future__ import annotations

import numpy as np
import pytest

from ftlct.protocol import exchange
from ftlct.protocol.envelope import seal
from ftlct.protocol.errors import ProtocolError
from ftlct.protocol.messages import (
    STATISTICS_TENSORS,
    BestVersionNote,
    RoundAnnouncement,
    tensors_to_body,
)
from ftlct.protocol.topics import Topics, parse_topic
from ftlct.protocol.validation_report import (
    ReportError,
    has_report,
    read_report,
    report_metrics,
)
from tests.support.refusals import reason_of

FED = "fed"


def enrolled(keys):
    return {"site-a": keys["a"].public_b64}.get


def statistics(dim: int = 3) -> dict[str, np.ndarray]:
    return {
        "stats.gram_upper": np.arange(dim * (dim + 1) // 2, dtype=np.float32) * 1e5,
        "stats.class_sums": np.ones((2, dim), np.float32),
        "stats.class_counts": np.array([3, 4], np.float32),
    }


def test_statistics_travel_exactly_as_fp32_whatever_codec_was_asked(keys):
    stats = statistics()
    data = exchange.build_update(
        keys["a"], FED, round=1, base_version="v1", cluster="global", n_samples=7,
        delta=stats, codec="fp16", kind="statistics",
    )  # fmt: skip
    message = exchange.open_update(data, enrolled(keys), FED)
    assert message.kind == "statistics" and message.codec == "fp32"
    for name in STATISTICS_TENSORS:
        np.testing.assert_array_equal(message.delta[name], stats[name])  # 1e6 would overflow fp16


def test_a_delta_reads_as_before_and_carries_no_kind_key(keys):
    data = exchange.build_update(
        keys["a"], FED, round=1, base_version="v1", cluster="global", n_samples=7,
        delta={"dense.0.bias": np.zeros(2, np.float32)},
    )  # fmt: skip
    assert "kind" not in exchange.peek(data).payload
    assert exchange.open_update(data, enrolled(keys), FED).kind == "delta"


def test_statistics_and_deltas_cannot_pass_for_each_other(keys):
    common = dict(round=1, base_version="v1", cluster="global", n_samples=7)
    with pytest.raises(ProtocolError, match="statistics update holds"):
        exchange.build_update(
            keys["a"], FED, **common, delta={"dense.0.bias": np.zeros(2, np.float32)},
            kind="statistics",
        )  # fmt: skip
    with pytest.raises(ProtocolError, match="may not carry statistics"):
        exchange.build_update(keys["a"], FED, **common, delta=statistics())
    # forged by a signer: a statistics payload with head tensors, an unknown kind, a lossy codec
    good = exchange.peek(
        exchange.build_update(keys["a"], FED, **common, delta=statistics(), kind="statistics")
    )
    head_body = tensors_to_body({"dense.0.bias": np.zeros(2, np.float32)})
    forged = [
        seal("site_update", FED, good.payload, keys["a"], head_body),
        seal("site_update", FED, {**good.payload, "kind": "gradients"}, keys["a"], good.body),
        seal("site_update", FED, {**good.payload, "codec": "fp16"}, keys["a"], good.body),
    ]
    for data in forged:
        assert reason_of(exchange.open_update, data, enrolled(keys), FED) == "malformed"


def moments(dim: int = 3) -> dict[str, np.ndarray]:
    return {
        "moments.sum": np.ones(dim, np.float32) * 7,
        "moments.sum_sq": np.arange(dim, dtype=np.float32) * 1e6,
        "moments.count": np.array([7], np.float32),
    }


def test_moments_travel_as_fp32_and_neither_statistics_nor_deltas_pass_for_them(keys):
    common = dict(round=1, base_version="v1", cluster="global", n_samples=7)
    data = exchange.build_update(
        keys["a"], FED, **common, delta=moments(), codec="int8", kind="moments"
    )
    message = exchange.open_update(data, enrolled(keys), FED)
    assert message.kind == "moments" and message.codec == "fp32"
    np.testing.assert_array_equal(message.delta["moments.sum_sq"], moments()["moments.sum_sq"])
    with pytest.raises(ProtocolError, match="moments update holds"):
        exchange.build_update(keys["a"], FED, **common, delta=statistics(), kind="moments")
    with pytest.raises(ProtocolError, match="may not carry statistics or moments"):
        exchange.build_update(keys["a"], FED, **common, delta=moments())
    good = exchange.peek(data)
    forged = [
        seal("site_update", FED, {**good.payload, "kind": "statistics"}, keys["a"], good.body),
        seal("site_update", FED, {**good.payload, "codec": "fp16"}, keys["a"], good.body),
    ]
    for forged_data in forged:
        assert reason_of(exchange.open_update, forged_data, enrolled(keys), FED) == "malformed"


def test_a_report_is_the_confusion_matrix_entry_by_entry():
    matrix = np.array([[5, 1], [2, 7]])
    metrics = report_metrics(matrix)
    assert metrics == {"vcm_0_0": 5.0, "vcm_0_1": 1.0, "vcm_1_0": 2.0, "vcm_1_1": 7.0}
    assert has_report(metrics) and not has_report({"val_f1": 0.5})
    np.testing.assert_array_equal(read_report({**metrics, "val_f1": 0.5}, 2), matrix)
    assert read_report({"val_f1": 0.5}, 2) is None
    assert report_metrics(np.zeros((5, 5))) == {}  # 25 entries would not fit the metric limit


@pytest.mark.parametrize(
    "metrics",
    [
        {"vcm_0_0": 1.0, "vcm_0_1": 1.0, "vcm_1_0": 1.0},  # one entry missing
        {"vcm_0_0": 1, "vcm_0_1": 1, "vcm_1_0": 1, "vcm_1_1": 1, "vcm_2_0": 1},  # a third class
        {"vcm_0_0": 1.5, "vcm_0_1": 1, "vcm_1_0": 1, "vcm_1_1": 1},  # not a count
        {"vcm_0_0": -1, "vcm_0_1": 1, "vcm_1_0": 1, "vcm_1_1": 1},  # negative
        {"vcm_0_0": 1e12, "vcm_0_1": 1, "vcm_1_0": 1, "vcm_1_1": 1},  # beyond any site
        {"vcm_00": 1, "vcm_0_1": 1, "vcm_1_0": 1, "vcm_1_1": 1},  # not vcm_i_j
    ],
)
def test_a_report_that_is_not_a_matrix_of_this_label_set_is_refused_whole(metrics):
    with pytest.raises(ReportError):
        read_report(metrics, 2)


def announcement(**extra) -> RoundAnnouncement:
    return RoundAnnouncement(
        round=3, strategy="ftl", deadline=10.0, opened_at=1.0, base_versions={"global": "v2"},
        **extra,
    )  # fmt: skip


def test_the_round_names_the_best_version_only_once_there_is_one(keys):
    plain = exchange.build_round(keys["cloud"], FED, announcement())
    assert "best_versions" not in exchange.peek(plain).payload
    note = BestVersionNote("r1-global-ab", 1, 0.75, 40)
    data = exchange.build_round(keys["cloud"], FED, announcement(best_versions={"global": note}))
    again = exchange.open_round(data, keys["cloud"].public_b64, FED)
    assert again.best_versions == {"global": note}


@pytest.mark.parametrize(
    "best",
    [
        {"global": {"version": "v", "round": 1, "score": 1.5, "n_val": 3}},
        {"global": {"version": "v", "round": 1, "score": 0.5}},
        {"global": {"version": "v", "round": 1, "score": 0.5, "n_val": 3, "site": "a"}},
        {"bad name!": {"version": "v", "round": 1, "score": 0.5, "n_val": 3}},
        {f"c{i}": {"version": "v", "round": 1, "score": 0.5, "n_val": 3} for i in range(65)},
        ["global"],
    ],
)
def test_a_malformed_best_version_note_makes_the_round_malformed(keys, best):
    payload = {**announcement().to_payload(), "best_versions": best}
    data = seal("round", FED, payload, keys["cloud"])
    assert reason_of(exchange.open_round, data, keys["cloud"].public_b64, FED) == "malformed"


def test_the_best_model_has_its_own_retained_topic():
    topics = Topics("f")
    assert topics.best_model("global") == "ftl/f/best/global"
    assert topics.all_best_models == "ftl/f/best/+"
    ref = parse_topic("ftl/f/best/global.1")
    assert (ref.kind, ref.subject) == ("best_model", "global.1")
    with pytest.raises(ProtocolError):
        parse_topic("ftl/f/best/global/x")
