"""The agent's one typed settings object: defaults < TOML file < environment < CLI flags.

Each section is a dataclass and one field of ``AgentSettings``; the TOML table,
the environment variable and the dotted override key all follow from the names:

    [dicom] port = 11112   <->   FTLCT_AGENT_DICOM_PORT=11112   <->   {"dicom.port": 11112}

Adding a section (as ``[mqtt]``, ``[training]``, ``[privacy]``, ``[twin]`` were) is one
new dataclass and one new field below; loading, environment overrides, type
coercion and unknown-key errors come for free. Nothing here reads settings
from globals at run time: ``load_settings`` builds the object once and the
caller passes it (or its sections) to the parts that need them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ftlct.protocol.codecs import CODECS
from ftlct.protocol.mqtt_connection import MqttSettings
from ftlct.protocol.settings import SettingsError, user_data_dir
from ftlct.protocol.settings import load_settings as load_typed_settings
from ftlct.protocol.twin_state import MAX_FEATURE_SLICES

ENV_PREFIX = "FTLCT_AGENT"
REPO_ROOT = Path(__file__).resolve().parents[1]
AGGREGATIONS = ("top_k_mean", "mean")
# The trainer's choices, defined here because this module is torch-free
# (ftlct.agent.training.local_training imports torch, and these from here).
OPTIMIZERS = ("adamw", "adam", "sgd")
CLASS_WEIGHTING = ("logit_adjusted", "balanced", "none")
CONFLICT_POLICIES = ("keep_first", "replace")  # what the store does with a resent UID
_CERT_ID = re.compile(r"^(CN=.{1,64}|sha256:[0-9a-fA-F]{64})$")
SERVE_VERSIONS = ("last", "best")


def default_data_dir() -> Path:
    """``$XDG_DATA_HOME/ftl-agent``, else ``~/.local/share/ftl-agent`` (independent of the cwd)."""
    return user_data_dir("ftl-agent")


def default_model_dir() -> Path:
    """``models/default`` of the repository (``make install`` builds it)."""
    return REPO_ROOT / "models" / "default"


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b?|b)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}


def parse_size(value: Any) -> int:
    """Bytes from ``1048576``, ``"500MB"``, ``"2GiB"`` or ``"1.5G"``."""
    if isinstance(value, bool):
        raise SettingsError(f"not a size: {value!r}")
    if isinstance(value, int | float):
        return int(value)
    match = _SIZE.match(str(value))
    if not match:
        raise SettingsError(f"not a size: {value!r} (examples: 1073741824, 500MB, 2GiB)")
    number, unit = float(match.group(1)), (match.group(2) or "").lower()
    factor = _UNITS[unit[:1]]
    if "i" in unit:
        factor = {1: 1, 10**3: 2**10, 10**6: 2**20, 10**9: 2**30, 10**12: 2**40}[factor]
    return int(number * factor)


def _size_field(default: int) -> Any:
    return field(default=default, metadata={"parse": parse_size})


@dataclass
class DicomSettings:
    """The DICOM node as the PACS sees it."""

    ae_title: str = "FTLCT"
    # Loopback unless told otherwise: exposing a DICOM node is the operator's decision.
    host: str = "127.0.0.1"
    port: int = 11112
    allow_ae: list[str] = field(default_factory=list)  # empty: any calling AE title
    max_associations: int = 10
    # Bytes we accept per P-DATA PDU; 0 = no limit. pynetdicom's work per PDU is most of its
    # receive cost: a 525 KB slice is 10 PDUs at 64 KiB, 6 at a sender's 128 KiB.
    max_pdu: int = 262144
    # A C-STORE dataset larger than this is aborted while it arrives (received to disk
    # in PDU-sized pieces, never whole in memory); 0 = no limit.
    max_dataset_bytes: int = _size_field(4 * 2**30)
    acse_timeout_s: float = 30.0
    dimse_timeout_s: float = 60.0
    network_timeout_s: float = 60.0
    drain_timeout_s: float = 30.0  # on SIGTERM: how long in-flight associations may finish
    # Processes that receive (agent/dicom/receive_workers.py): 1 receives inside the serve
    # process; N > 1 spawns N workers sharing the listening socket, for concurrent senders
    # on a machine with cores to spare (each worker costs ~65 MB, README "Performance").
    receive_processes: int = 1


@dataclass
class TlsSettings:
    """TLS for the DICOM listener; off unless ``cert`` and ``key`` are set."""

    cert: Path | None = None
    key: Path | None = None
    ca: Path | None = None  # CA bundle that client certificates must chain to
    require_client_cert: bool = False
    # Calling AE title -> the client certificate it must present: "CN=name" (the subject's
    # common name) or "sha256:HEX" (the certificate's fingerprint). When set, only these
    # AE titles are accepted, each with its own certificate.
    ae_certificates: dict[str, str] = field(default_factory=dict)

    @property
    def enabled(self) -> bool:
        return self.cert is not None


@dataclass
class StorageSettings:
    data_dir: Path = field(default_factory=default_data_dir)
    # Below this much free space the agent refuses new data instead of half-writing it.
    min_free_bytes: int = _size_field(512 * 2**20)
    # A resent SOP Instance with other bytes: "keep_first" (the stored copy stays, the new
    # bytes go to quarantine as a conflict) or "replace" (the new copy wins).
    on_conflict: str = "keep_first"
    # Refused bytes kept for inspection, at most; the oldest go first.
    quarantine_max_bytes: int = _size_field(2**30)
    quarantine_max_entries: int = 10_000
    # A stored instance's pages leave the page cache once it is durable (store/page_cache.py):
    # ingest writes into recycled memory, and the cache keeps what is read again.
    release_page_cache: bool = True


@dataclass
class SeriesSettings:
    quiet_period_s: float = 5.0  # a series is complete after this long without a new instance
    poll_interval_s: float = 0.25


@dataclass
class InferenceSettings:
    model_dir: Path = field(default_factory=default_model_dir)
    # onnxruntime intra-op threads (0: onnxruntime's choice). One ORT thread plus two
    # decode threads keep a 2-core box busy without starving the DICOM receive path.
    threads: int = 1
    decode_threads: int = 2
    # onnxruntime keeps activation buffers for the largest batch it ran: ~10 MB per
    # 224 px image for MobileNetV2; 8 is as fast per image as 16 (ftl-bench perf).
    batch_size: int = 8
    aggregation: str = "top_k_mean"  # or "mean"; see ftlct.agent.inference.aggregation
    top_k: int = 5
    negative_label: str = "normal"  # the label that means "no finding"
    eager: bool = True  # embed slices while the series is still arriving
    # Niceness added to the eager-embedding threads (Linux, per thread; 0..19, 0: none), so
    # that embedding takes only the CPU receiving leaves; series jobs always run unlowered.
    eager_niceness: int = 10
    # While an association receives, slices wait to be embedded until they add up to this
    # many seconds of embedding work, or the oldest waited twice that (0: embed at once).
    eager_defer_s: float = 4.0
    max_attempts: int = 3  # per inference job, then the series is marked failed


@dataclass
class ResultsSettings:
    """Where DICOM SR results go; nothing is sent unless ``destination`` is set."""

    destination: str | None = None  # AE@HOST:PORT
    # TLS to the destination: on when tls_ca is set (the CA its certificate must chain
    # to; the host name is checked), with our client certificate when tls_cert is set.
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    retry_initial_s: float = 5.0
    retry_max_s: float = 300.0
    max_attempts: int = 20


@dataclass
class LoggingSettings:
    level: str = "INFO"
    json: bool = False  # one JSON object per line instead of "event key=value"


@dataclass
class MetricsSettings:
    port: int = 0  # Prometheus /metrics; 0 = off
    host: str = "127.0.0.1"


@dataclass
class FederationSettings:
    """Who this site is in a federation; ``[mqtt]`` holds how to reach the broker."""

    broker: str | None = None  # mqtt://HOST:PORT or mqtts://HOST:PORT
    site: str | None = None
    name: str | None = None  # the federation name (topics live under ftl/{name}/)
    cloud_key: str | None = None  # public key that global models must be signed with
    # An update is resent until the cloud's signed receipt for it arrives (or its round
    # closes): first after resend_initial_s, then each wait resend_factor times the last,
    # at most resend_max_s (each wait jittered by +-20% so sites do not resend in step).
    resend_initial_s: float = 30.0
    resend_factor: float = 2.0
    resend_max_s: float = 600.0


@dataclass
class TrainingSettings:
    """Local fine-tuning of the head for federation rounds (``ftlct.agent.training``)."""

    auto: bool = True  # train as soon as a round is open and the labels allow it
    min_samples: int = 20  # labelled slice embeddings needed to take part in a round
    epochs: int = 5
    lr: float = 1e-3
    batch_size: int = 32
    weight_decay: float = 1e-4
    optimizer: str = "adamw"  # adamw, adam or sgd
    class_weighting: str = "logit_adjusted"  # or "balanced", "none" (see local_training)
    fedprox_mu: float = 0.0
    seed: int = 0
    # Held out by series (the same series every round) for local metrics and the gate.
    val_fraction: float = 0.2
    codec: str = "fp16"  # fp32, fp16 or int8 (protocol codecs)
    # The round's announced recipe (local_epochs, lr, batch_size, codec, fedprox_mu) wins
    # over the values above; false keeps the local ones.
    follow_round: bool = True
    threads: int = 1  # torch threads in the training process (a core stays with DICOM)
    check_interval_s: float = 5.0  # how often serve re-checks whether it can train
    # Gate on a new global head: refuse it when it drops local macro-F1 by more than this.
    gate: bool = True
    gate_max_f1_drop: float = 0.05
    gate_min_samples: int = 10  # held-out slices needed before the gate judges at all
    # Bounds on the round's announced recipe: a round asking for more (or less) is
    # refused (logged, counted in status), never trained on silently clamped values.
    max_local_epochs: int = 50
    max_batch_size: int = 4096
    min_lr: float = 1e-6
    max_lr: float = 1.0
    max_fedprox_mu: float = 100.0
    # Wall-clock limit of one local round's training child; on expiry its process group is
    # killed and the round recorded as failed (and not tried again).
    max_duration_s: float = 3600.0
    # Which global head to serve: "last" (each new one, through the gate) or "best" (the
    # version the sites' validation reports score highest, best/{cluster}, through the gate)
    serve: str = "last"


@dataclass
class PrivacySettings:
    """Differential privacy on the delta: L2 clip + Gaussian noise, zCDP accounting."""

    enabled: bool = False
    clip_norm: float = 1.0  # L2 bound on the whole delta (the sensitivity)
    noise_multiplier: float = 1.0  # noise std = noise_multiplier * clip_norm
    delta: float = 1e-5
    epsilon_limit: float = 10.0  # no more rounds once the total would pass it; 0 = no limit
    # With DP on, the update's n_samples is the count rounded to a multiple of this (at
    # least one bucket): the exact count would be a data-dependent number outside the noise.
    sample_count_bucket: int = 50
    # closed-form federations (and a standardised FTL federation's moments round): each
    # embedding is clipped to this L2 norm before its statistics (moments) are summed, and
    # noise of std noise_multiplier * sqrt(C^4 + C^2 + 1) goes on every number
    # (a guarantee per labelled slice, not per site; README "Federation at the edge")
    statistics_clip_norm: float = 30.0


@dataclass
class TwinSettings:
    """The scanner's digital twin on ``twins/{site}/state``."""

    enabled: bool = True
    period_s: float = 60.0  # re-published at least this often
    debounce_s: float = 2.0  # at most one update per this many seconds on changes
    # feature statistics over the most recent slice embeddings of the current backbone:
    # at most feature_window slices; none below feature_min_slices slices or from fewer
    # than feature_min_studies studies (one study's slices alone are never described)
    feature_window: int = 512
    feature_min_slices: int = 32
    feature_min_studies: int = 2


@dataclass
class AgentSettings:
    dicom: DicomSettings = field(default_factory=DicomSettings)
    tls: TlsSettings = field(default_factory=TlsSettings)
    storage: StorageSettings = field(default_factory=StorageSettings)
    series: SeriesSettings = field(default_factory=SeriesSettings)
    inference: InferenceSettings = field(default_factory=InferenceSettings)
    results: ResultsSettings = field(default_factory=ResultsSettings)
    logging: LoggingSettings = field(default_factory=LoggingSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    federation: FederationSettings = field(default_factory=FederationSettings)
    mqtt: MqttSettings = field(default_factory=MqttSettings)
    training: TrainingSettings = field(default_factory=TrainingSettings)
    privacy: PrivacySettings = field(default_factory=PrivacySettings)
    twin: TwinSettings = field(default_factory=TwinSettings)

    def validate(self) -> AgentSettings:
        """Raise ``SettingsError`` naming the first bad setting; returns self."""
        from ftlct.agent.destination import parse_destination

        d = self.dicom
        _check_ae_title("dicom.ae_title", d.ae_title)
        for ae in d.allow_ae:
            _check_ae_title("dicom.allow_ae", ae)
        _check(0 < d.port < 65536, "dicom.port", f"must be 1..65535, got {d.port}")
        _check(d.max_associations >= 1, "dicom.max_associations", "must be >= 1")
        _check(1 <= d.receive_processes <= 64, "dicom.receive_processes", "must be 1..64")
        _check(d.max_pdu == 0 or d.max_pdu >= 4096, "dicom.max_pdu", "must be 0 or >= 4096")
        t = self.tls
        _check((t.cert is None) == (t.key is None), "tls", "cert and key go together")
        _check(
            not t.require_client_cert or (t.enabled and t.ca is not None),
            "tls.require_client_cert",
            "needs tls.cert, tls.key and tls.ca",
        )
        for name in ("cert", "key", "ca"):
            path = getattr(t, name)
            _check(path is None or path.is_file(), f"tls.{name}", f"no such file: {path}")
        _check(
            not t.ae_certificates or t.require_client_cert,
            "tls.ae_certificates",
            "needs tls.require_client_cert (and tls.cert, tls.key, tls.ca)",
        )
        for ae, wanted in t.ae_certificates.items():
            _check_ae_title("tls.ae_certificates", ae)
            _check(
                isinstance(wanted, str) and _CERT_ID.match(wanted) is not None,
                f"tls.ae_certificates.{ae}",
                f'expected "CN=name" or "sha256:64 hex digits", got {wanted!r}',
            )
        _check(d.max_dataset_bytes >= 0, "dicom.max_dataset_bytes", "must be >= 0 (0: no limit)")
        st = self.storage
        _check(st.min_free_bytes >= 0, "storage.min_free_bytes", "must be >= 0")
        _check(
            st.on_conflict in CONFLICT_POLICIES,
            "storage.on_conflict",
            f"one of {CONFLICT_POLICIES}",
        )
        _check(st.quarantine_max_bytes >= 0, "storage.quarantine_max_bytes", "must be >= 0")
        _check(st.quarantine_max_entries >= 1, "storage.quarantine_max_entries", "must be >= 1")
        _check(self.series.quiet_period_s >= 0, "series.quiet_period_s", "must be >= 0")
        _check(self.series.poll_interval_s > 0, "series.poll_interval_s", "must be > 0")
        i = self.inference
        _check(i.aggregation in AGGREGATIONS, "inference.aggregation", f"one of {AGGREGATIONS}")
        _check(i.top_k >= 1, "inference.top_k", "must be >= 1")
        _check(i.batch_size >= 1, "inference.batch_size", "must be >= 1")
        _check(i.threads >= 0 and i.decode_threads >= 1, "inference.threads", "must be >= 0")
        _check(i.max_attempts >= 1, "inference.max_attempts", "must be >= 1")
        _check(0 <= i.eager_niceness <= 19, "inference.eager_niceness", "must be 0..19")
        _check(i.eager_defer_s >= 0, "inference.eager_defer_s", "must be >= 0")
        r = self.results
        if r.destination:
            try:
                parse_destination(r.destination)
            except ValueError as exc:
                raise SettingsError(f"results.destination: {exc}") from exc
        _check((r.tls_cert is None) == (r.tls_key is None), "results.tls_cert", "goes with tls_key")
        _check(
            r.tls_cert is None or r.tls_ca is not None, "results.tls_cert", "needs results.tls_ca"
        )
        for name in ("tls_ca", "tls_cert", "tls_key"):
            path = getattr(r, name)
            _check(path is None or path.is_file(), f"results.{name}", f"no such file: {path}")
        _check(0 <= self.metrics.port < 65536, "metrics.port", "must be 0..65535")
        level = self.logging.level.upper()
        _check(
            level in ("DEBUG", "INFO", "WARNING", "ERROR"), "logging.level", f"unknown {level!r}"
        )
        broker = self.federation.broker
        _check(
            broker is None or broker.startswith(("mqtt://", "mqtts://")),
            "federation.broker",
            f"expected mqtt://HOST:PORT or mqtts://HOST:PORT, got {broker!r}",
        )
        self._validate_federation()
        return self

    def _validate_federation(self) -> None:
        from ftlct.protocol.topics import check_name

        f = self.federation
        for key in ("site", "name"):
            value = getattr(f, key)
            if value is not None:
                try:
                    check_name(key, value)
                except ValueError as exc:
                    raise SettingsError(f"federation.{key}: {exc}") from exc
        if f.broker:
            missing = [k for k in ("site", "name", "cloud_key") if not getattr(f, k)]
            _check(
                not missing,
                "federation.broker",
                f"needs federation.{', federation.'.join(missing)}",
            )
        _check(f.resend_initial_s > 0, "federation.resend_initial_s", "must be > 0")
        _check(f.resend_factor >= 1, "federation.resend_factor", "must be >= 1")
        _check(
            f.resend_max_s >= f.resend_initial_s,
            "federation.resend_max_s",
            "must be >= resend_initial_s",
        )
        t = self.training
        _check(t.min_samples >= 1, "training.min_samples", "must be >= 1")
        _check(t.max_local_epochs >= 0, "training.max_local_epochs", "must be >= 0")
        _check(t.max_batch_size >= 1, "training.max_batch_size", "must be >= 1")
        _check(0 < t.min_lr <= t.max_lr, "training.min_lr", "0 < min_lr <= max_lr")
        _check(t.max_fedprox_mu >= 0, "training.max_fedprox_mu", "must be >= 0")
        _check(t.max_duration_s > 0, "training.max_duration_s", "must be > 0")
        _check(
            t.epochs >= 0 and t.batch_size >= 1, "training.epochs", "epochs >= 0, batch_size >= 1"
        )
        _check(t.lr > 0, "training.lr", "must be > 0")
        _check(t.optimizer in OPTIMIZERS, "training.optimizer", f"one of {OPTIMIZERS}")
        _check(
            t.class_weighting in CLASS_WEIGHTING,
            "training.class_weighting",
            f"one of {CLASS_WEIGHTING}",
        )
        _check(0 <= t.val_fraction < 1, "training.val_fraction", "must be in [0, 1)")
        _check(t.fedprox_mu >= 0, "training.fedprox_mu", "must be >= 0")
        _check(t.codec in CODECS, "training.codec", f"one of {CODECS}")
        _check(t.gate_max_f1_drop >= 0, "training.gate_max_f1_drop", "must be >= 0")
        _check(t.check_interval_s > 0, "training.check_interval_s", "must be > 0")
        _check(t.serve in SERVE_VERSIONS, "training.serve", f"one of {SERVE_VERSIONS}")
        p = self.privacy
        _check(p.clip_norm > 0, "privacy.clip_norm", "must be > 0")
        _check(p.noise_multiplier > 0, "privacy.noise_multiplier", "must be > 0")
        _check(p.statistics_clip_norm > 0, "privacy.statistics_clip_norm", "must be > 0")
        _check(0 < p.delta < 1, "privacy.delta", "must be in (0, 1)")
        _check(p.epsilon_limit >= 0, "privacy.epsilon_limit", "must be >= 0 (0: no limit)")
        _check(p.sample_count_bucket >= 1, "privacy.sample_count_bucket", "must be >= 1")
        w = self.twin
        _check(w.period_s > 0 and w.debounce_s >= 0, "twin.period_s", "must be > 0")
        _check(
            1 <= w.feature_min_slices <= w.feature_window <= MAX_FEATURE_SLICES,
            "twin.feature_min_slices",
            f"1 <= feature_min_slices <= feature_window <= {MAX_FEATURE_SLICES}",
        )
        _check(w.feature_min_studies >= 1, "twin.feature_min_studies", "must be >= 1")


def _check(ok: bool, name: str, message: str) -> None:
    if not ok:
        raise SettingsError(f"{name}: {message}")


def _check_ae_title(name: str, value: str) -> None:
    # PS3.5: AE titles are 1-16 characters of the default repertoire, no backslash.
    ok = 0 < len(value.strip()) <= 16 and value.isascii() and "\\" not in value
    _check(ok and value.isprintable(), name, f"not a valid AE title: {value!r}")


# --------------------------------------------------------------------------- loading


def load_settings(
    config: Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> AgentSettings:
    """Defaults, then the TOML ``config``, then ``FTLCT_AGENT_*`` variables, then ``overrides``.

    ``overrides`` maps dotted keys (``"dicom.port"``) to values; ``None`` values are
    skipped so CLI flags that were not given do not override anything. The loading
    itself is the one every ftl-ct program uses (``ftlct.protocol.settings``).
    """
    return load_typed_settings(AgentSettings, config, ENV_PREFIX, env, overrides).validate()
