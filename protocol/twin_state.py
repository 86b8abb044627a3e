"""The scanner twin an agent publishes on ``twins/{site}/state``: a closed schema, no PHI.

Every key at every level is listed here; a validator refuses anything else,
so a patient name, an accession number or a free-text error message cannot
ride along by accident. Strings are few and short (agent and model versions,
device make and model), and restricted to a plain character set.

``feature_stats`` is optional: twins of agents that do not send it (older
ones, or too few slices yet) validate without it, and ``to_json`` leaves it
out when absent, so a cloud that predates it still accepts those twins.
"""

from __future__ import annotations

import functools
import math
import re
import types
import typing
from dataclasses import asdict, dataclass, field, fields, is_dataclass

from ftlct.protocol.errors import ProtocolError

STATUSES = ("idle", "receiving", "inferring", "training", "offline")
_PLAIN_TEXT = re.compile(r"^[A-Za-z0-9 ._+:()/-]{0,64}$")
_MODALITY = re.compile(r"^[A-Z]{2,4}$")
_PLAIN_KEY = re.compile(r"^[A-Za-z0-9._+:()/-][A-Za-z0-9 ._+:()/-]{0,63}$")
# the forms of a manifest's tap names ("features.10", "_blocks.5", "_conv_head"), its pooling
# names ("mean", "max") and a backbone sha256 prefix
_PATTERNS = {
    "tap": re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,31}(\.[A-Za-z0-9_]{1,16}){0,3}$"),
    "pooling": re.compile(r"^[a-z][a-z0-9_]{0,15}$"),
    "hex12": re.compile(r"^[0-9a-f]{12}$"),
}
MAX_FEATURE_BLOCKS = 64  # 8 for the default model (4 taps x mean, max)
MAX_FEATURE_SLICES = 1_000_000


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
class FeatureBlock:
    """One tap x pooling block of the embedding, over the site's recent slices: the mean over
    slices of the block's average value, and its standard deviation over slices."""

    tap: str = field(default="", metadata={"text": "tap"})
    pooling: str = field(default="", metadata={"text": "pooling"})
    mean: float = field(default=0.0, metadata={"signed": True})
    std: float = 0.0


@dataclass
class FeatureStats:
    """How the site's scanner looks to the frozen backbone (dose, kernel and display curve
    shift it): aggregates over at least a minimum of recent slices, never per study."""

    backbone: str = field(default="", metadata={"text": "hex12"})  # sha256[:12] of the backbone
    slices: int = field(default=0, metadata={"range": (1, MAX_FEATURE_SLICES)})
    blocks: list[FeatureBlock] = field(
        default_factory=list, metadata={"range": (1, MAX_FEATURE_BLOCKS)}
    )


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
    feature_stats: FeatureStats | None = None

    @property
    def online(self) -> bool:
        return self.status != "offline"

    def to_json(self) -> dict:
        data = asdict(self)
        if data["feature_stats"] is None:
            del data["feature_stats"]  # absent, not null: what a cloud without the field knows
        return data

    @classmethod
    def from_json(cls, data: object) -> TwinState:
        """Strict parse: unknown keys, wrong types or non-plain strings -> ``ProtocolError``."""
        state = _parse(cls, data, "twin")
        if state.status not in STATUSES:
            raise ProtocolError("bad_twin_state", f"twin.status {state.status!r} not in {STATUSES}")
        if state.feature_stats is not None:
            names = [(b.tap, b.pooling) for b in state.feature_stats.blocks]
            if len(set(names)) != len(names):
                raise ProtocolError("bad_twin_state", "twin.feature_stats: a block named twice")
        return state


def validate_twin_state(data: object) -> TwinState:
    """``TwinState.from_json``: the check both the agent (before sending) and the cloud run."""
    return TwinState.from_json(data)


@functools.cache
def _schema(cls) -> tuple[dict, dict]:
    """``(field -> type, field -> its rules)`` of a schema class, worked out once per class."""
    hints = typing.get_type_hints(cls)
    return hints, {f.name: dict(f.metadata) for f in fields(cls)}


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


def _value(kind, value, where: str, rules: dict):
    if isinstance(kind, types.UnionType):  # ``X | None``: an optional part
        if value is None:
            return None
        (kind,) = [k for k in typing.get_args(kind) if k is not type(None)]
    if is_dataclass(kind):
        return _parse(kind, value, where)
    if kind is bool or isinstance(value, bool):
        raise ProtocolError("bad_twin_state", f"{where}: booleans are not part of the schema")
    low, high = rules.get("range", (0, None))
    if kind is int:
        if not isinstance(value, int) or value < low or (high is not None and value > high):
            bound = f"in {low}..{high}" if high is not None else f">= {low}"
            raise ProtocolError("bad_twin_state", f"{where} must be an integer {bound}")
        return value
    if kind is float:
        signed = rules.get("signed", False)
        if (
            not isinstance(value, int | float)
            or not math.isfinite(value)
            or (value < 0 and not signed)
        ):
            floor = "" if signed else " >= 0"
            raise ProtocolError("bad_twin_state", f"{where} must be a finite number{floor}")
        return float(value)
    if kind is str:
        pattern = _PATTERNS[rules["text"]] if "text" in rules else _PLAIN_TEXT
        if not isinstance(value, str) or not pattern.match(value):
            what = (
                f"a {rules['text']} name" if "text" in rules else "plain text of <= 64 characters"
            )
            raise ProtocolError("bad_twin_state", f"{where} must be {what}")
        return value
    if typing.get_origin(kind) is list:  # a bounded list of schema objects
        if not isinstance(value, list) or not low <= len(value) <= high:
            raise ProtocolError(
                "bad_twin_state", f"{where} must be a list of {low}..{high} entries"
            )
        (item,) = typing.get_args(kind)
        return [_value(item, entry, f"{where}[{i}]", {}) for i, entry in enumerate(value)]
    if typing.get_origin(kind) is dict:  # modality code (or plain name) -> count
        if not isinstance(value, dict) or len(value) > 16:
            raise ProtocolError("bad_twin_state", f"{where} must be an object of <= 16 entries")
        pattern = _PLAIN_KEY if rules.get("keys") == "plain" else _MODALITY
        for code, count in value.items():
            bad_count = not isinstance(count, int) or isinstance(count, bool) or count < 0
            if not isinstance(code, str) or not pattern.match(code) or bad_count:
                raise ProtocolError("bad_twin_state", f"{where}: {code!r} -> {count!r} not allowed")
        return dict(value)
    raise TypeError(f"twin schema type {kind} not handled")  # pragma: no cover
