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
