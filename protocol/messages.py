"""Payload schemas of the four message kinds, with strict JSON (de)serialisation.

The JSON part travels in the envelope header's ``payload``; tensors travel in
the safetensors body. ``from_payload`` raises ``ProtocolError('malformed')``
for anything that does not fit, so neither side works on half-checked data.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field

import numpy as np
from safetensors.numpy import load as load_tensors
from safetensors.numpy import save as save_tensors

from ftlct.protocol.codecs import CODECS
from ftlct.protocol.errors import ProtocolError, is_exit
from ftlct.protocol.topics import NAME

TENSOR_NAME = re.compile(r"^[A-Za-z0-9_.]{1,128}$")
METRIC_NAME = re.compile(r"^[a-z0-9_]{1,32}$")
BODY_DTYPES = (np.float32, np.float16, np.int8)
MAX_METRICS = 32
# Integers on the wire stay JSON-safe (exact in a float64) and fit SQLite's int64:
# a claimed n_samples of 2**63 is malformed, not an OverflowError in the cloud's store.
MAX_INT = 2**53
ROUND_STATUSES = ("open", "finished")
UPDATE_KEYS = {
    "kind",
    "site",
    "round",
    "base_version",
    "cluster",
    "n_samples",
    "metrics",
    "update_id",
    "codec",
    "codec_params",
    "public_key",
}
ROUND_KEYS = {
    "round",
    "strategy",
    "deadline",
    "opened_at",
    "base_versions",
    "default_cluster",
    "assignments",
    "min_sites",
    "training",
    "status",
    "extensions",
    "best_versions",
}
# What an update carries: "delta" (local - global; every federation but closed_form) or
# "statistics": a closed-form federation's sufficient statistics of the site's labelled
# embeddings (export/closed_form_head.py), exactly these tensors, fp32 only: a lossy codec
# would break the exact sum, and fp16 overflows on a Gram matrix. "moments": the per-dimension
# sums of the site's embeddings (export/feature_moments.py) that a standardised FTL federation
# asks for once, before its gradient rounds; fp32 too, for the same reasons.
UPDATE_KINDS = ("delta", "statistics", "moments")
STATISTICS_TENSORS = ("stats.gram_upper", "stats.class_sums", "stats.class_counts")
MOMENTS_TENSORS = ("moments.sum", "moments.sum_sq", "moments.count")
KIND_TENSORS = {"statistics": STATISTICS_TENSORS, "moments": MOMENTS_TENSORS}
# the widest embedding whose mean and std a round may announce (2 x 4096 numbers of at most ~24
# characters fit the round envelope's 256 KiB)
MAX_STANDARDISED_DIM = 4096
STATISTICS_CODEC = "fp32"  # every update kind but a delta travels fp32
MAX_BEST_VERSIONS = 64  # clusters named in one announcement's best_versions


def tensors_to_body(tensors: dict[str, np.ndarray]) -> bytes:
    for name in tensors:
        if not TENSOR_NAME.match(name):
            raise ValueError(f"tensor name {name!r} not allowed on the wire")
    return save_tensors({k: np.ascontiguousarray(v) for k, v in tensors.items()})


def body_to_tensors(body: bytes) -> dict[str, np.ndarray]:
    try:
        tensors = load_tensors(body)
    except BaseException as exc:  # safetensors raises its own error type, or panics (is_exit)
        if is_exit(exc):
            raise
        raise ProtocolError("malformed", f"body is not safetensors: {exc}") from exc
    for name, value in tensors.items():
        if not TENSOR_NAME.match(name) or value.dtype not in BODY_DTYPES:
            raise ProtocolError("malformed", f"tensor {name!r} ({value.dtype}) not allowed")
    return tensors


# ----------------------------------------------------------------- checks
def _fail(what: str):
    raise ProtocolError("malformed", what)


def _name(payload: dict, key: str) -> str:
    value = payload.get(key)
    if not isinstance(value, str) or not NAME.match(value):
        _fail(f"{key} must be a name, got {value!r}")
    return value


def _text(payload: dict, key: str, limit: int = 128) -> str:
    value = payload.get(key)
    if not isinstance(value, str) or not 0 < len(value) <= limit:
        _fail(f"{key} must be a string of 1-{limit} characters")
    return value


def _int(payload: dict, key: str, minimum: int = 0) -> int:
    value = payload.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or not minimum <= value <= MAX_INT:
        _fail(f"{key} must be an integer in [{minimum}, 2**53], got {value!r}")
    return value


def _number(payload: dict, key: str) -> float:
    value = payload.get(key)
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        _fail(f"{key} must be a finite number")
    return float(value)


def _name_map(payload: dict, key: str) -> dict[str, str]:
    value = payload.get(key)
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and NAME.match(k) and isinstance(v, str) for k, v in value.items()
    ):
        _fail(f"{key} must map names to strings")
    return dict(value)


def _keys(payload: dict, allowed: set[str], kind: str) -> None:
    unknown = set(payload) - allowed
    if unknown:
        _fail(f"{kind} payload has unknown keys {sorted(unknown)}")


# ----------------------------------------------------------------- round
@dataclass(frozen=True)
class RoundAnnouncement:
    """Retained on ``rounds/current``: what the sites should train, from which base, by when."""

    round: int
    strategy: str
    deadline: float  # unix seconds
    opened_at: float
    base_versions: dict[str, str]  # cluster -> global version to train from
    default_cluster: str = "global"
    assignments: dict[str, str] = field(default_factory=dict)  # site -> cluster (when clustered)
    min_sites: int = 1
    training: dict = field(default_factory=dict)  # local epochs, lr, codec, max_delta_norm, ...
    status: str = "open"  # "finished" once the last round is aggregated
    extensions: int = 0  # deadline extensions for lack of quorum
    # cluster -> the best version so far by the sites' validation reports (BestVersionNote)
    best_versions: dict[str, BestVersionNote] = field(default_factory=dict)

    def cluster_for(self, site: str) -> str:
        return self.assignments.get(site, self.default_cluster)

    def base_version_for(self, site: str) -> str | None:
        return self.base_versions.get(self.cluster_for(site))

    def to_payload(self) -> dict:
        payload = {
            "round": self.round,
            "strategy": self.strategy,
            "deadline": self.deadline,
            "opened_at": self.opened_at,
            "base_versions": dict(self.base_versions),
            "default_cluster": self.default_cluster,
            "assignments": dict(self.assignments),
            "min_sites": self.min_sites,
            "training": dict(self.training),
            "status": self.status,
            "extensions": self.extensions,
        }
        if self.best_versions:  # absent until sites report: reads as before
            payload["best_versions"] = {c: b.to_payload() for c, b in self.best_versions.items()}
        return payload

    @classmethod
    def from_payload(cls, payload: dict) -> RoundAnnouncement:
        _keys(payload, ROUND_KEYS, "round")
        status = payload.get("status")
        if status not in ROUND_STATUSES:
            _fail(f"round status {status!r} not in {ROUND_STATUSES}")
        training = payload.get("training", {})
        if not isinstance(training, dict):
            _fail("training must be an object")
        return cls(
            round=_int(payload, "round"),
            strategy=_text(payload, "strategy", 64),
            deadline=_number(payload, "deadline"),
            opened_at=_number(payload, "opened_at"),
            base_versions=_name_map(payload, "base_versions"),
            default_cluster=_name(payload, "default_cluster"),
            assignments=_name_map(payload, "assignments"),
            min_sites=_int(payload, "min_sites"),
            training=training,
            status=status,
            extensions=_int(payload, "extensions"),
            best_versions=_best_versions(payload.get("best_versions", {})),
        )


@dataclass(frozen=True)
class BestVersionNote:
    """The global version of one cluster that scored best on the sites' held-out slices."""

    version: str
    round: int  # the round that made it
    score: float  # federated validation macro-F1 (cloud/model_selection.py)
    n_val: int  # held-out slices behind the score, summed over the reporting sites

    def to_payload(self) -> dict:
        return {
            "version": self.version,
            "round": self.round,
            "score": self.score,
            "n_val": self.n_val,
        }


def _best_versions(value: object) -> dict[str, BestVersionNote]:
    if not isinstance(value, dict) or len(value) > MAX_BEST_VERSIONS:
        _fail(f"best_versions must map at most {MAX_BEST_VERSIONS} clusters to versions")
    notes = {}
    for cluster, note in value.items():
        if not isinstance(cluster, str) or not NAME.match(cluster) or not isinstance(note, dict):
            _fail("best_versions must map cluster names to objects")
        _keys(note, {"version", "round", "score", "n_val"}, "best_versions")
        score = _number(note, "score")
        if not 0.0 <= score <= 1.0:
            _fail(f"best version score must be in [0, 1], got {score}")
        notes[cluster] = BestVersionNote(
            _text(note, "version"), _int(note, "round"), score, _int(note, "n_val")
        )
    return notes


# ----------------------------------------------------------------- global model
# What a federation federates (DESIGN.md "Model directory" and README "Cloud and protocol"):
# "head": dense.{i}.weight/bias over a frozen backbone pinned by its sha256 (FTL, the agent);
# "network": a whole network's float32 tensors, pinned by the sha256 of their layout.
MODEL_KINDS = ("head", "network")
HEAD_TENSOR = re.compile(r"^dense\.\d+\.(weight|bias)$")
GLOBAL_MODEL_KEYS = {
    "cluster",
    "version",
    "round",
    "labels",
    "backbone_sha256",
    "architecture_sha256",
    "kind",
    "weights_sha256",
    "base_version",
}


def weights_layout_sha256(weights: dict[str, np.ndarray]) -> str:
    """The sha256 of a set of tensors' names and shapes: a network's architecture, not its values.

    A whole-network federation is pinned by it the way a head federation is
    pinned by its backbone's sha256: a site computes it from its own network
    and refuses a global model with another layout.
    """
    layout = sorted((name, [int(n) for n in np.shape(value)]) for name, value in weights.items())
    return hashlib.sha256(json.dumps(layout, separators=(",", ":")).encode()).hexdigest()


@dataclass(frozen=True)
class GlobalModel:
    """Retained on ``model/{cluster}``: the federation's current weights for one cluster.

    ``kind`` "head" (the default, and the only kind an agent installs): head
    tensors to run on top of the backbone named by ``backbone_sha256``.
    ``kind`` "network": every tensor of a whole network, pinned by
    ``architecture_sha256`` (``weights_layout_sha256``); ``backbone_sha256`` is empty.
    A head's payload carries neither ``kind`` nor ``architecture_sha256``, so it
    reads exactly as before whole-network federations existed.
    """

    cluster: str
    version: str
    round: int  # 0: the initial weights (the model directory's head, or --initial-weights)
    labels: list[str]
    backbone_sha256: str
    weights: dict[str, np.ndarray]  # float32; a head: dense.{i}.weight/bias
    weights_sha256: str = ""  # sha256 of the safetensors body (set when sealed)
    base_version: str | None = None  # the version this one was aggregated from
    kind: str = "head"
    architecture_sha256: str = ""  # kind "network" only

    def to_payload(self, weights_sha256: str) -> dict:
        payload = {
            "cluster": self.cluster,
            "version": self.version,
            "round": self.round,
            "labels": list(self.labels),
            "weights_sha256": weights_sha256,
            "base_version": self.base_version,
        }
        if self.kind == "head":
            payload["backbone_sha256"] = self.backbone_sha256
        else:
            payload["kind"] = self.kind
            payload["architecture_sha256"] = self.architecture_sha256
        return payload

    @classmethod
    def from_payload(cls, payload: dict, weights: dict[str, np.ndarray]) -> GlobalModel:
        _keys(payload, GLOBAL_MODEL_KEYS, "global_model")
        labels = payload.get("labels")
        if (
            not isinstance(labels, list)
            or len(labels) < 2
            or not all(isinstance(x, str) for x in labels)
        ):
            _fail("labels must be a list of >= 2 strings")
        base = payload.get("base_version")
        if base is not None and not isinstance(base, str):
            _fail("base_version must be a string or null")
        if any(v.dtype != np.float32 for v in weights.values()):
            _fail("global weights must be float32")
        kind = payload.get("kind", "head")
        if kind not in MODEL_KINDS:
            _fail(f"kind {kind!r} not in {MODEL_KINDS}")
        if kind == "head":
            if "architecture_sha256" in payload:
                _fail("a head is pinned by backbone_sha256, not architecture_sha256")
            foreign = sorted(name for name in weights if not HEAD_TENSOR.match(name))
            if foreign or not weights:
                _fail(f"a head holds dense.{{i}}.weight/bias tensors only, got {foreign[:3]}")
            backbone, architecture = _text(payload, "backbone_sha256", 64), ""
        else:
            if "backbone_sha256" in payload:
                _fail("a whole network is pinned by architecture_sha256, not a backbone")
            backbone, architecture = "", _text(payload, "architecture_sha256", 64)
        return cls(
            cluster=_name(payload, "cluster"),
            version=_text(payload, "version"),
            round=_int(payload, "round"),
            labels=list(labels),
            backbone_sha256=backbone,
            weights=weights,
            weights_sha256=_text(payload, "weights_sha256", 64),
            base_version=base,
            kind=kind,
            architecture_sha256=architecture,
        )


# ----------------------------------------------------------------- site update
@dataclass(frozen=True)
class UpdateMessage:
    """Sent on ``updates/{site}``: one site's delta for one round, decoded to float32."""

    site: str
    round: int
    base_version: str
    cluster: str
    n_samples: int
    delta: dict[str, np.ndarray]
    update_id: str  # the same for every resend of this update
    codec: str = "fp32"
    metrics: dict[str, float] = field(default_factory=dict)  # local loss/accuracy..., no PHI
    created: float = 0.0
    public_key: str = ""  # the signer's key, used only by a cloud in trust-on-first-use mode
    kind: str = "delta"  # or "statistics", "moments" (UPDATE_KINDS); ``delta`` then holds them
    # as received (``open_update``): the signed body and its codec's parameters, so the cloud can
    # keep the delta as it travelled; empty on the sending side
    body: bytes = field(default=b"", repr=False)
    codec_params: dict = field(default_factory=dict, repr=False)

    def to_payload(self, codec_params: dict) -> dict:
        payload = {
            "public_key": self.public_key,
            "site": self.site,
            "round": self.round,
            "base_version": self.base_version,
            "cluster": self.cluster,
            "n_samples": self.n_samples,
            "metrics": dict(self.metrics),
            "update_id": self.update_id,
            "codec": self.codec,
            "codec_params": codec_params,
        }
        if self.kind != "delta":  # a delta's payload reads as it did before statistics existed
            payload["kind"] = self.kind
        return payload


def check_update_tensors(kind: str, tensors: dict[str, np.ndarray]) -> None:
    """Statistics and moments are exactly their tensors; a delta never uses their names."""
    if kind in KIND_TENSORS:
        names = KIND_TENSORS[kind]
        if set(tensors) != set(names):
            _fail(f"a {kind} update holds {', '.join(names)}, got {sorted(tensors)[:4]}")
    elif any(name.startswith(("stats.", "moments.")) for name in tensors):
        _fail("a delta may not carry statistics or moments tensors (stats.*, moments.*)")


def check_metrics(metrics: object) -> dict[str, float]:
    if not isinstance(metrics, dict) or len(metrics) > MAX_METRICS:
        _fail(f"metrics must be an object of <= {MAX_METRICS} entries")
    out = {}
    for key, value in metrics.items():
        ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        if not (isinstance(key, str) and METRIC_NAME.match(key)) or not ok:
            _fail(f"metric {key!r} -> {value!r} not allowed (names [a-z0-9_], finite numbers)")
        out[key] = float(value)
    return out


def update_fields(payload: dict) -> dict:
    """The checked JSON fields of an update payload (the delta is decoded separately)."""
    _keys(payload, UPDATE_KEYS, "site_update")
    public_key = payload.get("public_key", "")
    if not isinstance(public_key, str) or len(public_key) > 64:
        _fail("public_key must be a base64 string")
    codec = payload.get("codec")
    if codec not in CODECS:
        _fail(f"codec {codec!r} not in {CODECS}")
    kind = payload.get("kind", "delta")
    if kind not in UPDATE_KINDS:
        _fail(f"update kind {kind!r} not in {UPDATE_KINDS}")
    if kind != "delta" and codec != STATISTICS_CODEC:
        _fail(f"{kind} travel as {STATISTICS_CODEC}, not {codec}")
    params = payload.get("codec_params")
    if not isinstance(params, dict):
        _fail("codec_params must be an object")
    update_id = payload.get("update_id")
    if not isinstance(update_id, str) or not re.fullmatch(r"[A-Za-z0-9_-]{8,64}", update_id):
        _fail("update_id must be 8-64 characters of [A-Za-z0-9_-]")
    return {
        "site": _name(payload, "site"),
        "round": _int(payload, "round", 1),
        "base_version": _text(payload, "base_version"),
        "cluster": _name(payload, "cluster"),
        "n_samples": _int(payload, "n_samples", 1),
        "metrics": check_metrics(payload.get("metrics", {})),
        "update_id": update_id,
        "codec": codec,
        "codec_params": params,
        "public_key": public_key,
        "kind": kind,
    }
