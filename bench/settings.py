"""``BenchSettings``: everything ``ftl-bench federation`` reads, in one typed object.

Defaults <- ``--config`` TOML (tables ``[ftl]``, ``[network]``, ``[cfl]``) <-
``FTLCT_BENCH_*`` environment <- flags, as every ftl-ct program does
(``ftlct.protocol.settings``). The defaults are the run the README reports.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field

from ftlct.agent.training.local_training import LocalTrainConfig
from ftlct.cloud.strategies.server_optimizer import server_optimizer
from ftlct.protocol.settings import load_settings

ENV_PREFIX = "FTLCT_BENCH"
# fedavg / cfl fine-tune the ImageNet backbone's last blocks and a head; *_cnn train SmallCnn
FEDERATED = ("ftl", "ftl_closed_form", "fedavg", "cfl", "fedavg_cnn", "cfl_cnn")
REFERENCES = ("central", "local")
# the cloud strategy behind each federated method
STRATEGY_OF = {
    "ftl": "ftl",
    "ftl_closed_form": "closed_form",
    "fedavg": "fedavg",
    "cfl": "cfl",
    "fedavg_cnn": "fedavg",
    "cfl_cnn": "cfl",
}
METHODS = FEDERATED + REFERENCES
TRANSPORTS = ("inproc", "mqtt")


@dataclass
class TrainSettings:
    """One method family's local training (mapped onto ``LocalTrainConfig``)."""

    epochs: int = 2
    lr: float = 3e-3
    batch_size: int = 32
    weight_decay: float = 1e-2
    optimizer: str = "adamw"
    class_weighting: str = "logit_adjusted"  # the agent's default (local_training.py)
    fedprox_mu: float = 0.0
    head_dropout: float = 0.0
    # the cloud's server optimizer (cloud/strategies/server_optimizer.py); 0 and 1: plain FedAvg
    server_momentum: float = 0.0
    server_lr: float = 1.0

    def server_params(self) -> dict:
        """``make_strategy`` keywords for the cloud's server optimizer."""
        return {"server_momentum": self.server_momentum, "server_lr": self.server_lr}

    def config(self, val_fraction: float, seed: int, augment=None) -> LocalTrainConfig:
        return LocalTrainConfig(
            epochs=self.epochs,
            lr=self.lr,
            batch_size=self.batch_size,
            weight_decay=self.weight_decay,
            optimizer=self.optimizer,
            class_weighting=self.class_weighting,
            fedprox_mu=self.fedprox_mu,
            seed=seed,
            val_fraction=val_fraction,
            head_dropout=self.head_dropout,
            augment=augment,
        )


@dataclass
class FtlSettings(TrainSettings):
    backbone: str = "mobilenet_v2"  # mobilenet_v2 | efficientnet_lite0 (export/backbones.py)
    taps: str = ""  # comma-separated stage indices of the embedding; empty: the backbone's
    pooling: str = ""  # mean, max or mean+max; empty: the backbone's
    head: str = "linear"  # linear | mlp
    # scanner harmonisation inside backbone.onnx (export/harmonise.py): a fixed blur (pixels;
    # 0 = none), then each image's channels standardised; every method's backbone has it
    blur_sigma: float = 1.0
    standardise: bool = True
    # AdaBN at each site (bench/site_adaptation.py): "none", "all" batch norms, or "early"
    # (stages up to adabn_up_to); slices drawn evenly over the site's labels when balanced
    adabn: str = "none"
    adabn_up_to: int = 6
    adabn_balanced: bool = True
    adabn_per_class: int = 48
    # extra training views per image, each the site's scanner plus a random
    # acquisition change (scanners.JITTER_RANGES), embedded once like the others
    jitter_views: int = 3
    # the cloud's ftl strategy with standardise: a moments round first, then every gradient
    # round trains the head on embeddings standardised by the fleet's mean and std
    # (export/feature_moments.py); chosen on seeds 0-3 (README "Result over 10 splits")
    standardise_features: bool = True

    def strategy_params(self) -> dict:
        """``make_strategy("ftl", ...)`` keywords: the server optimizer and the moments round."""
        return {**self.server_params(), "standardise": self.standardise_features}


@dataclass
class NetworkSettings(TrainSettings):
    """Whole-network baselines; they always flip and shift (bench/augment.py)."""

    epochs: int = 1
    lr: float = 3e-3
    weight_decay: float = 1e-4
    jitter: bool = True  # random acquisition changes per batch, the ranges FTL jitters over


@dataclass
class FinetuneSettings(TrainSettings):
    """``fedavg`` / ``cfl``: the ImageNet backbone's stages from ``first_block`` on, plus a head.

    The frozen prefix's output is cached once per view (like FTL's embeddings);
    each round a site trains on one of its cached views per image (its scanner
    or one of the jittered copies, drawn per round), so augmentation costs no
    extra passes.
    """

    # MobileNetV2 features.18 (the 1x1 conv to 1280 channels, its BN): the last stage; from
    # features.17 on a round costs ~3.5x as much, which 2 cores cannot give 10 splits
    first_block: int = 18
    epochs: int = 1
    lr: float = 1e-3
    weight_decay: float = 1e-4


@dataclass
class ClosedFormSettings:
    """``ftl_closed_form``: sites send head statistics once, the cloud solves the head."""

    solver: str = "discriminant"  # discriminant | ridge (export/closed_form_head.py)
    shrinkage: float = 0.5
    dp_clip: float = 0.0  # > 0 with dp_noise: clip each embedding, add Gaussian noise
    dp_noise: float = 0.0  # noise multiplier z (one release: 1/(2 z^2)-zCDP per slice)

    def params(self) -> dict:
        return {"solver": self.solver, "shrinkage": self.shrinkage}


@dataclass
class CflSettings:
    """Passed to ``make_strategy("cfl", ...)``; see ``cloud/strategies/cfl.py``."""

    eps1: float = 0.4  # the paper's values
    eps2: float = 1.6
    # SmallCnn's mean update never gets below 0.4 within the run (it stays ~2-4), so
    # without waiving eps1 CFL would never test a split: waive it from round 5 on
    split_check_after: int = 5  # -1: never waive eps1
    max_cross_similarity: float = 0.0
    min_cluster_size: int = 1

    def params(self) -> dict:
        params = asdict(self)
        if params["split_check_after"] < 0:
            params["split_check_after"] = None
        return params


@dataclass
class BenchSettings:
    data: str = ""
    out: str = "out/experiment"
    sites: int = 6
    rounds: int = 20
    methods: str = ",".join(METHODS)
    seed: int = 0
    # splits k = 0..splits-1 use seed + k (bench/multi_split.py)
    splits: int = 1
    # which splits (or other runs) chose the settings, so the report can say it
    chosen_on: str = (
        "seeds 0-3 (training defaults: seed 1; logit adjustment: levers on seeds 0-2; AdaBN "
        "levers: seeds 0-2) and a cross-validated probe over all covid-ct images without "
        "scanners (embedding taps, closed-form solver) and a cross-validated probe with the "
        "simulated scanners and label-skewed sites (harmonisation: blur sigma, standardising; "
        "confirmed on seeds 0-1; the head's feature standardisation: seeds 0-3); seeds 10 and "
        "up chose nothing"
    )
    alpha: float = 0.5
    test_fraction: float = 0.2
    input_size: int = 224
    grey_windows: str = ""  # name:center:width,... for 8-bit images; empty: identity grey
    windows: str = (
        ""  # CT windows for HU images; empty: the model default (soft tissue, lung, bone)
    )
    scanners: str = "realistic"  # realistic | harsh | none (every site the reference scanner)
    val_fraction: float = 0.0  # local validation split (the agent's gating); 0: train on all
    # share of each site's images held out (whole images, all their views) to score every
    # global version; the federation keeps the best (cloud/model_selection.py). 0: last only
    selection_fraction: float = 0.2
    transport: str = "inproc"
    broker: str = ""  # mqtt transport: use this broker instead of starting mosquitto
    mqtt_timeout_s: float = 300.0  # mqtt transport: longest wait for the cloud's next round
    cache_dir: str = ""  # default: OUT/cache
    threads: int = 0  # torch and onnxruntime threads; 0: library default
    ftl: FtlSettings = field(default_factory=FtlSettings)
    network: NetworkSettings = field(default_factory=NetworkSettings)
    finetune: FinetuneSettings = field(default_factory=FinetuneSettings)
    closed_form: ClosedFormSettings = field(default_factory=ClosedFormSettings)
    cfl: CflSettings = field(default_factory=CflSettings)

    def method_list(self) -> list[str]:
        """Requested methods in canonical order; ``central`` is always run (it sets the target)."""
        asked = [m.strip() for m in self.methods.split(",") if m.strip()]
        unknown = [m for m in asked if m not in METHODS]
        if unknown:
            raise ValueError(f"unknown methods {unknown}; known: {', '.join(METHODS)}")
        if not asked:
            raise ValueError("no methods given")
        return [m for m in METHODS if m in asked or m == "central"]

    def check(self) -> None:
        self.method_list()
        if self.sites < 1 or self.rounds < 1:
            raise ValueError("--sites and --rounds must be >= 1")
        if self.splits < 1:
            raise ValueError(f"--splits must be >= 1, got {self.splits}")
        if self.transport not in TRANSPORTS:
            raise ValueError(f"--transport must be one of {', '.join(TRANSPORTS)}")
        from ftlct.export.backbones import ARCHITECTURES

        if self.ftl.backbone not in ARCHITECTURES:
            raise ValueError(f"ftl.backbone must be one of {', '.join(ARCHITECTURES)}")
        if self.ftl.adabn not in ("none", "all", "early"):
            raise ValueError(f"ftl.adabn must be none, all or early, got {self.ftl.adabn!r}")
        if self.ftl.head not in ("linear", "mlp"):
            raise ValueError(f"ftl.head must be linear or mlp, got {self.ftl.head!r}")
        if self.scanners not in ("realistic", "harsh", "none"):
            raise ValueError(f"--scanners must be realistic, harsh or none, got {self.scanners!r}")
        if not 0.0 <= self.selection_fraction < 0.9:
            raise ValueError(
                f"selection_fraction must be in [0, 0.9), got {self.selection_fraction}"
            )
        if self.transport == "mqtt" and "ftl_closed_form" in self.method_list():
            raise ValueError(
                "ftl_closed_form runs in process only (its wire form is not wired yet)"
            )
        from ftlct.cloud.strategies import make_strategy

        make_strategy("closed_form", **self.closed_form.params())  # the cloud's own checks
        try:
            make_strategy("ftl", **self.ftl.strategy_params())
        except ValueError as exc:
            raise ValueError(f"ftl.{exc}") from exc
        if (self.closed_form.dp_clip > 0) != (self.closed_form.dp_noise > 0):
            raise ValueError("closed_form.dp_clip and dp_noise go together (both > 0, or both 0)")
        for family in ("ftl", "network", "finetune"):
            try:  # the cloud's own bounds, checked before any work starts
                server_optimizer(**getattr(self, family).server_params())
            except ValueError as exc:
                raise ValueError(f"{family}.{exc}") from exc
        if self.ftl.jitter_views < 0:
            raise ValueError("ftl.jitter_views must be >= 0")
        if not 32 <= self.input_size <= 1024:
            raise ValueError(f"--input-size must be in [32, 1024], got {self.input_size}")
        # LocalTrainConfig checks the training values
        self.ftl.config(self.val_fraction, self.seed)
        self.network.config(self.val_fraction, self.seed)
        self.finetune.config(self.val_fraction, self.seed)

    def to_json(self) -> dict:
        return asdict(self)


def load_bench_settings(config=None, env=None, **flags) -> BenchSettings:
    settings = load_settings(
        BenchSettings, config, ENV_PREFIX, env if env is not None else os.environ, flags
    )
    try:
        settings.check()
    except ValueError as exc:
        from ftlct.protocol.settings import SettingsError

        raise SettingsError(str(exc)) from exc
    return settings
