"""The helpers an agent and the cloud call, from both sides of the wire."""

import hashlib

import numpy as np
import pytest

from ftlct.protocol import exchange
from ftlct.protocol.envelope import seal
from ftlct.protocol.errors import ProtocolError
from ftlct.protocol.messages import (
    GlobalModel,
    RoundAnnouncement,
    tensors_to_body,
    weights_layout_sha256,
)
from ftlct.protocol.twin_state import TwinState
from tests.support.refusals import reason_of

FED = "fed"


@pytest.fixture
def enrolled(keys):
    table = {"site-a": keys["a"].public_b64, "site-b": keys["b"].public_b64}
    return table.get


def _delta():
    rng = np.random.default_rng(0)
    return {
        "dense.0.weight": rng.normal(size=(2, 8)).astype(np.float32),
        "dense.0.bias": np.array([0.5, -0.5], np.float32),
    }


def _update(keys, **overrides):
    args = dict(round=2, base_version="v1", cluster="global", n_samples=40, delta=_delta())
    args.update(overrides)
    return exchange.build_update(keys["a"], FED, **args)


@pytest.mark.parametrize("codec", ["fp32", "fp16", "int8"])
def test_site_update_round_trips_through_the_cloud_opener(keys, enrolled, codec):
    data = _update(keys, codec=codec, metrics={"loss": 0.25, "accuracy": 1}, update_id="u-12345678")
    message = exchange.open_update(data, enrolled, FED)
    assert (message.site, message.round, message.base_version) == ("site-a", 2, "v1")
    assert (message.cluster, message.n_samples, message.update_id) == ("global", 40, "u-12345678")
    assert message.metrics == {"loss": 0.25, "accuracy": 1.0} and message.codec == codec
    tolerance = {"fp32": 0, "fp16": 2e-3, "int8": 0.02}[codec]
    for name, value in _delta().items():
        np.testing.assert_allclose(message.delta[name], value, atol=tolerance, rtol=0)
    assert exchange.peek(data).payload["update_id"] == "u-12345678"


def test_update_ids_are_fresh_unless_given(keys, enrolled):
    first = exchange.open_update(_update(keys), enrolled, FED)
    second = exchange.open_update(_update(keys), enrolled, FED)
    assert first.update_id != second.update_id


def test_update_rejections_carry_their_reason(keys, enrolled):
    data = _update(keys)
    assert reason_of(exchange.open_update, data, lambda site: None, FED) == "unknown_site"
    assert (
        reason_of(exchange.open_update, data, lambda site: keys["b"].public_b64, FED)
        == "bad_signature"
    )
    assert reason_of(exchange.open_update, data, enrolled, "other-fed") == "wrong_federation"
    assert reason_of(exchange.open_update, data, enrolled, FED, max_bytes=100) == "oversize"
    assert reason_of(exchange.open_update, b"garbage!" * 4, enrolled, FED) == "malformed"


def test_trust_on_first_use_verifies_with_the_offered_key_only_when_asked(keys):
    data = _update(keys)
    unknown = lambda site: None  # noqa: E731
    assert reason_of(exchange.open_update, data, unknown, FED) == "unknown_site"
    message = exchange.open_update(data, unknown, FED, trust_on_first_use=True)
    assert message.public_key == keys["a"].public_b64
    # the offered key must still match the signature
    payload = exchange.peek(data).payload
    payload["public_key"] = keys["b"].public_b64
    forged = seal("site_update", FED, payload, keys["a"], exchange.peek(data).body)
    assert (
        reason_of(exchange.open_update, forged, unknown, FED, trust_on_first_use=True)
        == "bad_signature"
    )


def test_a_site_cannot_send_an_update_in_another_sites_name(keys, enrolled):
    payload = exchange.peek(_update(keys)).payload
    payload["site"] = "site-b"
    forged = seal("site_update", FED, payload, keys["a"], exchange.peek(_update(keys)).body)
    assert reason_of(exchange.open_update, forged, enrolled, FED) == "wrong_sender"


def test_malformed_update_fields_are_refused_before_sending(keys):
    with pytest.raises(ProtocolError, match="n_samples"):
        _update(keys, n_samples=0)
    with pytest.raises(ProtocolError, match="metric"):
        _update(keys, metrics={"Patient Name": 1.0})


def _model(**overrides):
    fields = dict(
        cluster="global",
        version="v2",
        round=1,
        labels=["normal", "abnormal"],
        backbone_sha256="ab" * 32,
        weights=_delta(),
        base_version="v1",
    )
    fields.update(overrides)
    return GlobalModel(**fields)


def test_global_model_verifies_with_the_cloud_key(keys):
    data = exchange.build_global_model(keys["cloud"], FED, _model())
    model = exchange.open_global_model(
        data,
        keys["cloud"].public_b64,
        FED,
        backbone_sha256="ab" * 32,
        labels=["normal", "abnormal"],
    )
    assert (model.version, model.round, model.base_version) == ("v2", 1, "v1")
    assert len(model.weights_sha256) == 64
    for name, value in _delta().items():
        np.testing.assert_array_equal(model.weights[name], value)


def test_global_model_refusals(keys):
    data = exchange.build_global_model(keys["cloud"], FED, _model())
    cloud = keys["cloud"].public_b64
    assert reason_of(exchange.open_global_model, data, keys["a"].public_b64, FED) == "bad_signature"
    assert (
        reason_of(exchange.open_global_model, data, cloud, FED, backbone_sha256="cd" * 32)
        == "backbone_mismatch"
    )
    assert (
        reason_of(exchange.open_global_model, data, cloud, FED, labels=["a", "b"])
        == "labels_mismatch"
    )
    forged = exchange.build_global_model(keys["a"], FED, _model())  # a site posing as the cloud
    assert reason_of(exchange.open_global_model, forged, cloud, FED) == "bad_signature"


def _network():
    rng = np.random.default_rng(1)
    return {
        "features.0.weight": rng.normal(size=(4, 3, 3, 3)).astype(np.float32),
        "features.1.running_var": np.ones(4, np.float32),
        "classifier.weight": rng.normal(size=(2, 4)).astype(np.float32),
        "classifier.bias": np.zeros(2, np.float32),
    }


def _network_model(**overrides):
    weights = _network()
    fields = dict(
        cluster="global.1",
        version="r3-global.1-abc",
        round=3,
        labels=["normal", "abnormal"],
        backbone_sha256="",
        weights=weights,
        kind="network",
        architecture_sha256=weights_layout_sha256(weights),
    )
    fields.update(overrides)
    return GlobalModel(**fields)


def test_layout_sha256_pins_names_and_shapes_not_values():
    weights = _network()
    assert weights_layout_sha256(weights) == weights_layout_sha256(
        {k: v * 3 + 1 for k, v in reversed(list(weights.items()))}
    )
    wider = {**weights, "classifier.weight": np.zeros((2, 5), np.float32)}
    renamed = {("fc.bias" if k == "classifier.bias" else k): v for k, v in weights.items()}
    assert len({weights_layout_sha256(w) for w in (weights, wider, renamed)}) == 3


def test_whole_network_model_verifies_with_its_layout_pin(keys):
    data = exchange.build_global_model(keys["cloud"], FED, _network_model())
    cloud = keys["cloud"].public_b64
    pin = weights_layout_sha256(_network())
    model = exchange.open_global_model(
        data, cloud, FED, kind="network", architecture_sha256=pin, labels=["normal", "abnormal"]
    )
    assert (model.kind, model.cluster, model.backbone_sha256) == ("network", "global.1", "")
    for name, value in _network().items():
        np.testing.assert_array_equal(model.weights[name], value)
    assert exchange.peek(data).payload["architecture_sha256"] == pin
    assert "backbone_sha256" not in exchange.peek(data).payload
    other = weights_layout_sha256({"classifier.weight": np.zeros((2, 4), np.float32)})
    assert (
        reason_of(
            exchange.open_global_model, data, cloud, FED, kind="network", architecture_sha256=other
        )
        == "architecture_mismatch"
    )
    assert (
        reason_of(exchange.open_global_model, data, cloud, FED, kind="network", labels=["a", "b"])
        == "labels_mismatch"
    )


def test_an_agent_refuses_a_whole_network_and_a_network_site_refuses_a_head(keys):
    network = exchange.build_global_model(keys["cloud"], FED, _network_model())
    head = exchange.build_global_model(keys["cloud"], FED, _model())
    cloud = keys["cloud"].public_b64
    # as the agent opened models before its ModelPin said kind="head": no kind given, a head
    assert (
        reason_of(
            exchange.open_global_model,
            network,
            cloud,
            FED,
            backbone_sha256="ab" * 32,
            labels=["normal", "abnormal"],
        )
        == "kind_mismatch"
    )
    assert (
        reason_of(exchange.open_global_model, head, cloud, FED, kind="network") == "kind_mismatch"
    )


def test_a_head_reads_as_before_and_holds_head_tensors_only(keys):
    cloud = keys["cloud"].public_b64
    payload = exchange.peek(exchange.build_global_model(keys["cloud"], FED, _model())).payload
    assert "kind" not in payload and "architecture_sha256" not in payload  # older agents read it
    # a "head" whose tensors are a whole network, signed by the cloud itself
    weights = _network()
    body = tensors_to_body(weights)
    disguised = {**payload, "weights_sha256": hashlib.sha256(body).hexdigest()}
    forged = seal("global_model", FED, disguised, keys["cloud"], body)
    with pytest.raises(ProtocolError, match="dense") as info:
        exchange.open_global_model(forged, cloud, FED, backbone_sha256="ab" * 32)
    assert info.value.reason == "malformed"
    # a network that also names a backbone, or a kind nobody knows
    for bad in ({"kind": "network", "architecture_sha256": "c" * 64}, {"kind": "tail"}):
        body = tensors_to_body(_delta())
        odd = {**payload, **bad, "weights_sha256": hashlib.sha256(body).hexdigest()}
        sealed = seal("global_model", FED, odd, keys["cloud"], body)
        assert (
            reason_of(exchange.open_global_model, sealed, cloud, FED, kind="network") == "malformed"
        )


def test_round_announcement_round_trips(keys):
    announcement = RoundAnnouncement(
        round=4,
        strategy="cfl",
        deadline=1000.5,
        opened_at=900.0,
        base_versions={"global.0": "v7", "global.1": "v8"},
        default_cluster="global.0",
        assignments={"site-b": "global.1"},
        min_sites=2,
        training={"local_epochs": 1, "lr": 0.01},
    )
    again = exchange.open_round(
        exchange.build_round(keys["cloud"], FED, announcement), keys["cloud"].public_b64, FED
    )
    assert again == announcement
    assert again.base_version_for("site-a") == "v7" and again.base_version_for("site-b") == "v8"


def test_twin_state_and_will_are_signed_and_schema_checked(keys, enrolled):
    twin = exchange.open_twin_state(
        exchange.build_twin_state(keys["a"], FED, TwinState(status="training", outbox=3)),
        enrolled,
        FED,
    )
    assert twin.site == "site-a" and twin.state.status == "training" and twin.state.outbox == 3
    will = exchange.open_twin_state(
        exchange.build_offline_will(keys["b"], FED, "v2"), enrolled, FED
    )
    assert will.site == "site-b" and not will.state.online and will.state.model_version == "v2"
    with pytest.raises(ProtocolError) as info:
        exchange.build_twin_state(keys["a"], FED, {"status": "idle", "patient_id": "123"})
    assert info.value.reason == "bad_twin_state"
    sneaky = seal("twin_state", FED, {"status": "idle", "patient_id": "123"}, keys["a"])
    assert reason_of(exchange.open_twin_state, sneaky, enrolled, FED) == "bad_twin_state"


def _resealed(keys, codec="int8", **changes):
    """A validly signed update whose payload was changed after build_update's own checks."""
    data = _update(keys, codec=codec)
    envelope = exchange.peek(data)
    payload = {**envelope.payload, **changes}
    return seal("site_update", FED, payload, keys["a"], envelope.body)


@pytest.mark.parametrize(
    "changes",
    [
        {"n_samples": 2**63},  # overflowed SQLite's INTEGER in the cloud's store
        {"n_samples": 2**53 + 1},
        {"round": 2**64},
        {"codec_params": {"scales": ["dense.0.weight", "dense.0.bias"]}},  # AttributeError on main
        {"codec_params": {"scales": "1.0"}},
        {"codec_params": {"scales": {"dense.0.weight": True, "dense.0.bias": 1.0}}},
        {"codec_params": {"scales": {"dense.0.weight": 1.0}}},  # a tensor without its scale
        {"codec_params": {"scales": {}, "extra": 1}},
    ],
)
def test_signed_updates_with_impossible_fields_are_malformed(keys, enrolled, changes):
    assert reason_of(exchange.open_update, _resealed(keys, **changes), enrolled, FED) == "malformed"


def test_codecs_without_parameters_refuse_any(keys, enrolled):
    for codec in ("fp32", "fp16"):
        data = _resealed(keys, codec=codec, codec_params={"scales": {}})
        assert reason_of(exchange.open_update, data, enrolled, FED) == "malformed"
    largest = _resealed(keys, codec="fp32", n_samples=2**53)
    assert exchange.open_update(largest, enrolled, FED).n_samples == 2**53


def test_an_absurd_but_well_formed_int8_scale_decodes_for_the_norm_bound_to_judge(keys, enrolled):
    # an integer scale of 10**30 raised TypeError in numpy's isfinite on main
    scales = {"dense.0.weight": 10**30, "dense.0.bias": 1e300}
    message = exchange.open_update(_resealed(keys, codec_params={"scales": scales}), enrolled, FED)
    weight, bias = message.delta["dense.0.weight"], message.delta["dense.0.bias"]
    assert np.isfinite(weight).all() and np.abs(weight).max() > 1e28
    assert not np.isfinite(bias).all()  # float32 overflow: the cloud refuses it as non_finite
