"""``CloudSettings``: everything ``ftl-cloud serve`` reads, in one typed object.

Defaults run with no file against ``mqtt://127.0.0.1:1883``. A TOML file
(``--config``) may set any field; ``[mqtt]``, ``[limits]``, ``[training]``
and ``[strategy_params]`` are tables. Environment variables ``FTLCT_CLOUD_*``
override the file (``FTLCT_CLOUD_MQTT_PASSWORD_FILE``, ``FTLCT_CLOUD_MIN_SITES``...),
flags override both. Credentials and certificate paths live only in
``[mqtt]`` / the environment, never in flags.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ftlct.protocol.mqtt_connection import MqttSettings
from ftlct.protocol.settings import load_settings, user_data_dir

ENV_PREFIX = "FTLCT_CLOUD"


def _default_training() -> dict:
    # Announced to the sites in rounds/current; the agent interprets it. A head trains on
    # cached embeddings in seconds, so a round affords many local epochs: with 1 epoch at
    # lr 0.01 the sites' heads stayed at chance on covid-ct, 20 at 1e-3 learn (make demo).
    return {"local_epochs": 20, "lr": 1e-3, "batch_size": 32, "codec": "fp32"}


@dataclass
class LimitsSettings:
    max_update_bytes: int = 16 * 1024 * 1024  # whole envelope, checked before parsing
    max_delta_norm: float = 100.0  # L2 over all tensors of one update; also announced to sites
    rejections_kept: int = 10_000  # rows of the rejections table; the counts by reason stay exact
    # No single site steers (site_weights.py): an update weighs min(n_samples, max_update_samples),
    # and no site more than max_site_share of its cluster's total weight in a round (1.0: no bound).
    max_update_samples: int = 1_000_000
    max_site_share: float = 0.5
    # received but not yet judged; beyond it the cloud stops acknowledging (the broker holds them)
    max_inbox_messages: int = 100_000

    def check(self) -> None:
        """``ValueError`` naming the first limit out of its range."""
        if (
            self.max_update_bytes < 1024
            or self.max_delta_norm <= 0
            or self.rejections_kept < 1
            or self.max_inbox_messages < 1
        ):
            raise ValueError(
                "[limits] max_update_bytes must be >= 1024, max_delta_norm > 0, "
                "rejections_kept >= 1, max_inbox_messages >= 1"
            )
        if self.max_update_samples < 1 or not 0.0 < self.max_site_share <= 1.0:
            raise ValueError("[limits] max_update_samples must be >= 1, max_site_share in (0, 1]")


@dataclass
class CloudSettings:
    broker: str = "mqtt://127.0.0.1:1883"
    federation: str = "default"
    strategy: str = "ftl"
    strategy_params: dict = field(default_factory=dict)  # passed to make_strategy
    min_sites: int = 2
    round_timeout: float = 600.0  # seconds a round stays open (extended while below min_sites)
    rounds: int = 0  # stop after this many completed rounds; 0: never
    model: str = "models/default"  # a head federation starts from this directory's head
    initial_weights: str = ""  # a whole-network federation starts from this safetensors file
    state_dir: str = field(default_factory=lambda: str(user_data_dir("ftl-cloud")))
    client_id: str = ""  # default ftl-cloud-{federation}; must be stable for the persistent session
    dev_trust_on_first_use: bool = False  # DEV ONLY: enrol unknown sites from their first update
    tick_s: float = 0.5  # how often deadlines are checked
    http: str = ""  # HOST:PORT of the read-only dashboard (cloud.dashboard); "" = off
    training: dict = field(default_factory=_default_training)
    limits: LimitsSettings = field(default_factory=LimitsSettings)
    # The widest in-flight window MQTT allows: the broker hands every message straight to the
    # cloud's receive path (which commits in batches) and never has to queue one for it, so its
    # max_queued_messages (mosquitto: 1000, dropped beyond) cannot be reached by a burst.
    mqtt: MqttSettings = field(default_factory=lambda: MqttSettings(receive_maximum=65535))

    @property
    def state_path(self) -> Path:
        return Path(self.state_dir)

    @property
    def mqtt_client_id(self) -> str:
        return self.client_id or f"ftl-cloud-{self.federation}"


def load_cloud_settings(config=None, env=None, **flags) -> CloudSettings:
    """Defaults <- TOML ``config`` <- ``FTLCT_CLOUD_*`` env <- ``flags`` (None = not given)."""
    return load_settings(
        CloudSettings, config, ENV_PREFIX, env if env is not None else os.environ, flags
    )
