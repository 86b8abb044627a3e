"""The twin schema is closed: nothing outside it (PHI included) gets through."""

import pytest

from ftlct.protocol.errors import ProtocolError
from ftlct.protocol.twin_state import TwinCounts, TwinState, validate_twin_state


def test_a_full_state_round_trips():
    state = TwinState(status="inferring", agent_version="0.1.0", model_version="r3", outbox=2)
    state.counts = TwinCounts(instances_stored=120, series_complete=3)
    state.scanner.modalities = {"CT": 3}
    state.scanner.manufacturer = "SIEMENS"
    state.latency.p95_s = 1.25
    again = validate_twin_state(state.to_json())
    assert again == state
    assert again.online and not TwinState(status="offline").online


@pytest.mark.parametrize(
    "data",
    [
        {"patient_name": "DOE^JOHN"},
        {"counts": {"instances_stored": 1, "last_patient_id": 7}},
        {"scanner": {"station_name": "CT1"}},
        {"scanner": {"modalities": {"DOE^JOHN": 1}}},
        {"scanner": {"manufacturer": "Doe^John 1970-01-01 <ssn>"}},
        {"model_version": "x" * 65},
        {"status": "exploded"},
        {"outbox": -1},
        {"outbox": 1.5},
        {"outbox": True},
        {"latency": {"p50_s": float("nan")}},
        {"counts": "12"},
        ["not", "an", "object"],
    ],
)
def test_anything_outside_the_schema_is_refused(data):
    with pytest.raises(ProtocolError) as info:
        validate_twin_state(data)
    assert info.value.reason == "bad_twin_state"


def test_a_partial_state_gets_defaults():
    state = validate_twin_state({"status": "training", "counts": {"labels": 4}})
    assert state.counts.labels == 4 and state.counts.instances_stored == 0


def test_device_names_kernels_and_privacy_rounds_are_in_the_schema():
    state = validate_twin_state(
        {
            "counts": {"gate_refusals": 1, "updates_sent": 3},
            "privacy": {"epsilon_spent": 2.5, "epsilon_last_round": 1.2, "rounds": 2},
            "scanner": {
                "manufacturers": {"SIEMENS": 4, "GE MEDICAL SYSTEMS": 1},
                "models": {"SOMATOM Definition AS+": 4},
                "kernels": {"B30f": 3, "H30s/Hr40": 2},
            },
        }
    )
    assert state.scanner.kernels["H30s/Hr40"] == 2 and state.privacy.rounds == 2


@pytest.mark.parametrize(
    "scanner",
    [
        {"kernels": {"DOE^JOHN": 1}},
        {"manufacturers": {"": 1}},
        {"models": {"x" * 65: 1}},
        {"kernels": {"B30f": -1}},
        {"kernels": {"B30f": True}},
        {"modalities": {"Siemens": 1}},  # modality codes keep their own pattern
    ],
)
def test_named_counts_refuse_anything_but_plain_names_and_counts(scanner):
    with pytest.raises(ProtocolError):
        validate_twin_state({"scanner": scanner})


def _feature_stats(**change) -> dict:
    block = {"tap": "features.10", "pooling": "mean", "mean": -0.1234, "std": 0.05678}
    blocks = change.pop("blocks", [block, {**block, "pooling": "max", "mean": 2.5}])
    return {"backbone": "0123456789ab", "slices": 512, "blocks": blocks, **change}


def test_feature_stats_round_trip_and_absent_ones_stay_absent():
    state = validate_twin_state({"status": "idle", "feature_stats": _feature_stats()})
    assert state.feature_stats.blocks[0].mean == -0.1234  # block means may be negative
    assert validate_twin_state(state.to_json()) == state
    # a twin without them (an older agent, or too few slices) is still valid, and what a new
    # agent sends without them has no such key at all, so an older cloud accepts it too
    old = validate_twin_state({"status": "idle", "counts": {"labels": 1}})
    assert old.feature_stats is None and "feature_stats" not in old.to_json()
    assert validate_twin_state({"feature_stats": None}).feature_stats is None


_BLOCK = {"tap": "features.10", "pooling": "mean", "mean": 0.5, "std": 0.1}


@pytest.mark.parametrize(
    ("stats", "where", "says"),
    [
        (_feature_stats(blocks=[{**_BLOCK, "mean": float("nan")}]), "blocks[0].mean", "finite"),
        (_feature_stats(blocks=[{**_BLOCK, "mean": float("inf")}]), "blocks[0].mean", "finite"),
        (_feature_stats(blocks=[{**_BLOCK, "std": float("-inf")}]), "blocks[0].std", "finite"),
        (_feature_stats(blocks=[{**_BLOCK, "std": -0.1}]), "blocks[0].std", ">= 0"),
        (_feature_stats(blocks=[{**_BLOCK, "mean": "0.5"}]), "blocks[0].mean", "finite"),
        (
            _feature_stats(blocks=[{**_BLOCK, "tap": f"t{i}"} for i in range(65)]),
            "blocks",
            "1..64 entries",
        ),
        (_feature_stats(blocks=[]), "blocks", "1..64 entries"),
        (_feature_stats(blocks={"0": _BLOCK}), "blocks", "list"),
        (_feature_stats(blocks=[{**_BLOCK, "tap": "DOE^JOHN"}]), "blocks[0].tap", "tap name"),
        (_feature_stats(blocks=[{**_BLOCK, "tap": "features 10"}]), "blocks[0].tap", "tap name"),
        (_feature_stats(blocks=[{**_BLOCK, "tap": "x" * 40}]), "blocks[0].tap", "tap name"),
        (_feature_stats(blocks=[{**_BLOCK, "pooling": "Mean"}]), "blocks[0].pooling", "pooling"),
        (_feature_stats(blocks=[{**_BLOCK, "pooling": 3}]), "blocks[0].pooling", "pooling"),
        (_feature_stats(blocks=[{**_BLOCK, "patient": "x"}]), "blocks[0]", "not in the twin"),
        (_feature_stats(blocks=[_BLOCK, _BLOCK]), "feature_stats", "named twice"),
        (_feature_stats(backbone="0123456789AB"), "backbone", "hex12"),
        (_feature_stats(backbone="0123456789abcdef"), "backbone", "hex12"),
        (_feature_stats(slices=0), "slices", "1..1000000"),
        (_feature_stats(slices=10**7), "slices", "1..1000000"),
        (_feature_stats(slices=True), "slices", "booleans"),
        (_feature_stats(slices=32.0), "slices", "integer"),
        (_feature_stats(study_uid="1.2.3"), "feature_stats", "not in the twin"),
        ([1, 2], "feature_stats", "object"),
    ],
)
def test_bad_feature_stats_are_refused_naming_the_field(stats, where, says):
    with pytest.raises(ProtocolError) as info:
        validate_twin_state({"status": "idle", "feature_stats": stats})
    assert info.value.reason == "bad_twin_state"
    message = str(info.value)
    assert f"twin.feature_stats.{where}" in message or f"twin.{where}" in message, message
    assert says in message, message
