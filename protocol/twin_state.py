"""The scanner twin an agent publishes on ``twins/{site}/state``: a closed schema, no PHI.

Every key at every level is listed here; a validator refuses anything else,
so a patient name, an accession number or a free-text error message cannot
ride along by accident. Strings are few and short (agent and model versions,
device make and model), and restricted to a plain character set.
"""

from __future__ import annotations

import functools
import math
import re
import typing
from dataclasses import asdict, dataclass, field, fields, is_dataclass

from ftlct.protocol.errors import ProtocolError

STATUSES = ("idle", "receiving", "inferring", "training", "offline")
_PLAIN_TEXT = re.compile(r"^[A-Za-z0-9 ._+:()/-]{0,64}$")
_MODALITY = re.compile(r"^[A-Z]{2,4}$")
_PLAIN_KEY = re.compile(r"^[A-Za-z0-9._+:()/-][A-Za-z0-9 ._+:()/-]{0,63}$")


@dataclass
class TwinCounts:
    instances_stored: int = 0
    series_complete: int = 0
    series_inferred: int = 0
    quarantined: int = 0
    labels: int = 0
    rounds_trained: int = 0
    updates_sent: int = 0  # acknowledged by the broker
    gate_refusals: int = 0  # global heads the local gate kept out of service


@dataclass
class QueueDepths:
    assembling: int = 0  # series waiting for their quiet period
    inference: int = 0
    training: int = 0
    results: int = 0  # results waiting to be sent (SR C-STORE)


@dataclass
class Latency:
    p50_s: float = 0.0
    p95_s: float = 0.0


@dataclass
class PrivacyBudget:
    epsilon_spent: float = 0.0  # in total, over every round (zCDP composition)
    epsilon_limit: float = 0.0  # 0: no differential privacy configured
    delta: float = 0.0
    epsilon_last_round: float = 0.0
    rounds: int = 0  # noised releases so far


@dataclass
class ScannerProfile:
    """Device-level aggregates (never per patient)."""

    manufacturer: str = ""
    model_name: str = ""
    modalities: dict[str, int] = field(default_factory=dict)  # DICOM modality code -> series
    series_per_day: float = 0.0
    median_slices_per_series: float = 0.0
    median_slice_thickness_mm: float = 0.0
    median_kvp: float = 0.0
    # name -> number of series; device names and reconstruction kernels, plain text only
    manufacturers: dict[str, int] = field(default_factory=dict, metadata={"keys": "plain"})
    models: dict[str, int] = field(default_factory=dict, metadata={"keys": "plain"})
    kernels: dict[str, int] = field(default_factory=dict, metadata={"keys": "plain"})


@dataclass
class TwinState:
    status: str = "idle"
    agent_version: str = ""
    model_version: str = ""
    counts: TwinCounts = field(default_factory=TwinCounts)
    queue_depths: QueueDepths = field(default_factory=QueueDepths)
    latency: Latency = field(default_factory=Latency)
    outbox: int = 0
    privacy: PrivacyBudget = field(default_factory=PrivacyBudget)
    scanner: ScannerProfile = field(default_factory=ScannerProfile)
    uptime_s: float = 0.0

    @property
    def online(self) -> bool:
        return self.status != "offline"

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: object) -> TwinState:
        """Strict parse: unknown keys, wrong types or non-plain strings -> ``ProtocolError``."""
        state = _parse(cls, data, "twin")
        if state.status not in STATUSES:
            raise ProtocolError("bad_twin_state", f"twin.status {state.status!r} not in {STATUSES}")
        return state


def validate_twin_state(data: object) -> TwinState:
    """``TwinState.from_json``: the check both the agent (before sending) and the cloud run."""
    return TwinState.from_json(data)


@functools.cache
def _schema(cls) -> tuple[dict, dict]:
    """``(field -> type, field -> key rule)`` of a schema class, worked out once per class."""
    hints = typing.get_type_hints(cls)
    return hints, {f.name: f.metadata.get("keys") for f in fields(cls)}


def _parse(cls, data: object, where: str):
    if not isinstance(data, dict):
        raise ProtocolError("bad_twin_state", f"{where} must be an object")
    hints, keys = _schema(cls)
    unknown = sorted(set(data) - set(keys))
    if unknown:
        raise ProtocolError("bad_twin_state", f"{where}: keys not in the twin schema: {unknown}")
    values = {}
    for name, value in data.items():
        values[name] = _value(hints[name], value, f"{where}.{name}", keys[name])
    return cls(**values)


def _value(kind, value, where: str, keys: str | None = None):
    if is_dataclass(kind):
        return _parse(kind, value, where)
    if kind is bool or isinstance(value, bool):
        raise ProtocolError("bad_twin_state", f"{where}: booleans are not part of the schema")
    if kind is int:
        if not isinstance(value, int) or value < 0:
            raise ProtocolError("bad_twin_state", f"{where} must be a non-negative integer")
        return value
    if kind is float:
        if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
            raise ProtocolError("bad_twin_state", f"{where} must be a finite number >= 0")
        return float(value)
    if kind is str:
        if not isinstance(value, str) or not _PLAIN_TEXT.match(value):
            raise ProtocolError("bad_twin_state", f"{where} must be plain text of <= 64 characters")
        return value
    if typing.get_origin(kind) is dict:  # modality code (or plain name) -> count
        if not isinstance(value, dict) or len(value) > 16:
            raise ProtocolError("bad_twin_state", f"{where} must be an object of <= 16 entries")
        pattern = _PLAIN_KEY if keys == "plain" else _MODALITY
        for code, count in value.items():
            bad_count = not isinstance(count, int) or isinstance(count, bool) or count < 0
            if not isinstance(code, str) or not pattern.match(code) or bad_count:
                raise ProtocolError("bad_twin_state", f"{where}: {code!r} -> {count!r} not allowed")
        return dict(value)
    raise TypeError(f"twin schema type {kind} not handled")  # pragma: no cover
