"""The round loop: sites train with a learner, a transport aggregates with the cloud's strategy.

Time is the wall time a real federation would see: sites train in parallel,
so a round costs its slowest site plus the aggregation (with the MQTT
transport: plus the real broker round trip). Sites are simulated one after
the other in this process, so each site's training is timed on its own.
Scoring the test views after each round is not counted.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ftlct.agent.training.local_training import ArrayDataset, Weights
from ftlct.bench.learners import Learner, round_seed
from ftlct.cloud.model_selection import BestVersion, Candidate
from ftlct.cloud.strategies import SiteUpdate
from ftlct.export.metrics import ClassificationMetrics, from_confusion
from ftlct.protocol.exchange import build_update
from ftlct.protocol.identity import Identity, public_b64_of

Tick = Callable[[], None]


@dataclass(frozen=True)
class SiteData:
    name: str
    train: ArrayDataset  # the site's own images, through its scanner
    test: np.ndarray  # the global test images, through this site's scanner
    train_rows: np.ndarray | None = None  # dataset indices behind ``train`` (for leak checks)
    val: ArrayDataset | None = None  # held-out images (its scanner) that score global versions


@dataclass
class RoundRecord:
    round: int
    f1: float
    accuracy: float
    elapsed_s: float
    clusters: int = 1
    update_norms: tuple[float, ...] = ()  # L2 norm of each site's delta this round
    validation_f1: float | None = None  # federated validation score of this round's models

    def to_json(self) -> dict:
        data = {
            "round": self.round,
            "f1": self.f1,
            "accuracy": self.accuracy,
            "elapsed_s": round(self.elapsed_s, 3),
            "clusters": self.clusters,
        }
        if self.validation_f1 is not None:
            data["validation_f1"] = round(self.validation_f1, 6)
        if self.update_norms:
            data["update_norm_mean"] = round(float(np.mean(self.update_norms)), 6)
            data["update_norm_max"] = round(float(np.max(self.update_norms)), 6)
        return data


@dataclass
class MethodRun:
    name: str
    history: list[RoundRecord]
    final: ClassificationMetrics
    per_site: list[ClassificationMetrics]
    bytes_up_per_round: int | None
    start_s: float = 0.0  # feature extraction before round 1 (FTL embeddings)
    extra: dict = field(default_factory=dict)
    # the models of the round with the best federated validation score, scored on the test views
    best_validated: ClassificationMetrics | None = None
    best_round: int | None = None


class Transport:
    """Moves updates to the aggregator and global models back (in process or over MQTT)."""

    def start(self, initial: Weights) -> None:
        raise NotImplementedError

    def models_for(self, sites: Sequence[str]) -> dict[str, tuple[str, Weights]]:
        """site -> (cluster, global weights of that cluster)."""
        raise NotImplementedError

    def announced(self, site: str) -> dict:
        """The training config the cloud announced to ``site`` for the open round (the keys
        its strategy adds: ``update_kind``, ``feature_mean`` / ``feature_std``...)."""
        return {}

    def exchange(self, round_: int, updates: list[SiteUpdate], metrics: dict[str, dict]) -> None:
        """Deliver one round's updates; returns once the next global models are known."""
        raise NotImplementedError

    def describe(self) -> dict:
        return {}

    def close(self) -> None:
        """Release what ``start`` acquired."""


# --------------------------------------------------------------------------- scoring


def score_sites(
    predict: Callable[[int], np.ndarray],
    sites: Sequence[SiteData],
    labels: np.ndarray,
    n_classes: int,
) -> tuple[ClassificationMetrics, list[ClassificationMetrics]]:
    """Pooled metrics over every (site, test image) pair, and each site's own."""
    per_site = []
    total = np.zeros((n_classes, n_classes), dtype=np.int64)
    for index in range(len(sites)):
        predicted = predict(index)
        matrix = np.bincount(labels * n_classes + predicted, minlength=n_classes**2).reshape(
            n_classes, n_classes
        )
        per_site.append(from_confusion(matrix))
        total += matrix
    return from_confusion(total), per_site


def mean_metrics(per_site: list[ClassificationMetrics]) -> ClassificationMetrics:
    """Site-averaged accuracy/precision/recall/F1 with the summed confusion matrix."""
    return ClassificationMetrics(
        accuracy=float(np.mean([m.accuracy for m in per_site])),
        precision=float(np.mean([m.precision for m in per_site])),
        recall=float(np.mean([m.recall for m in per_site])),
        f1=float(np.mean([m.f1 for m in per_site])),
        confusion_matrix=sum(m.confusion_matrix for m in per_site),
        per_class_f1=tuple(np.mean([m.per_class_f1 for m in per_site], axis=0).tolist()),
    )


# --------------------------------------------------------------------------- payload size


class EnvelopeMeter:
    """Bytes of the real signed ``site_update`` envelope (protocol.exchange) for an update of
    ``kind`` (a delta, or a closed-form federation's statistics)."""

    def __init__(self, federation: str = "bench", codec: str = "fp32", kind: str = "delta"):
        private = Ed25519PrivateKey.generate()
        self.identity = Identity("site-0", private, public_b64_of(private))
        self.federation = federation
        self.codec = codec
        self.kind = kind

    def size(self, update: SiteUpdate, round_: int, metrics: dict[str, float]) -> int:
        return len(
            build_update(
                self.identity,
                self.federation,
                round=round_,
                base_version=f"r{round_ - 1}",
                cluster=update.cluster,
                n_samples=update.n_samples,
                delta=update.delta,
                metrics=wire_metrics(metrics),
                codec=self.codec,
                kind=self.kind,
            )
        )


def wire_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """The finite local metrics, as the protocol accepts them."""
    return {k: float(v) for k, v in metrics.items() if np.isfinite(v)}


# --------------------------------------------------------------------------- the loops


def validation_score(learner: Learner, models: dict, sites: Sequence[SiteData]) -> float | None:
    """Each site scores its current model on its held-out images; the federation sums the
    confusion matrices (``selection.federated_validation_score``). None without held-out data."""
    from ftlct.cloud.model_selection import federated_validation_score

    n = learner.n_classes
    confusions = []
    for site in sites:
        if site.val is None or not len(site.val):
            continue
        predicted = learner.predict(models[site.name][1], site.val.inputs)
        confusions.append(
            np.bincount(site.val.labels * n + predicted, minlength=n * n).reshape(n, n)
        )
    return federated_validation_score(confusions) if confusions else None


def _score_models(learner: Learner, models: dict, sites: Sequence[SiteData], labels: np.ndarray):
    """Each site's current model (its cluster's) on that site's test views."""
    return score_sites(
        lambda i: learner.predict(models[sites[i].name][1], sites[i].test),
        sites,
        labels,
        learner.n_classes,
    )


def moments_update(site: SiteData, cluster: str, announced: dict) -> tuple[SiteUpdate, dict]:
    """A moments round at ``site``: the sums of its training embeddings, as the agent sends
    them (``agent.training.local_round``), each clipped to the announced bound."""
    from ftlct.export.feature_moments import site_moments

    clip = announced.get("max_embedding_norm")
    moments = site_moments(site.train.inputs, clip_norm=float(clip) if clip else None)
    update = SiteUpdate(site.name, moments.to_arrays(), len(site.train), cluster)
    return update, {"n_train": float(len(site.train))}


def standardisation_of(announced: dict) -> dict:
    """``learner.train`` keywords for the announced feature moments (none if there are none)."""
    if "feature_mean" not in announced:
        return {}
    mean = np.asarray(announced["feature_mean"], np.float32)
    return {"standardise": (mean, np.asarray(announced["feature_std"], np.float32))}


def run_federated(
    name: str,
    learner: Learner,
    transport: Transport,
    sites: Sequence[SiteData],
    test_labels: np.ndarray,
    rounds: int,
    seed: int,
    start_s: float = 0.0,
    tick: Tick | None = None,
) -> MethodRun:
    """``rounds`` rounds of: every site trains from its cluster's model, the transport aggregates."""
    names = [s.name for s in sites]
    meter, moments_meter = EnvelopeMeter(), EnvelopeMeter(kind="moments")
    history: list[RoundRecord] = []
    sizes: list[int] = []  # the first delta round's envelopes
    moments_sizes: list[int] = []  # a standardised FTL federation's moments round
    elapsed = start_s
    best = BestVersion()
    best_models = None
    transport.start(learner.initial())
    try:
        for round_ in range(1, rounds + 1):
            models = transport.models_for(names)
            updates, metrics, seconds = [], {}, []
            first_delta_round = not sizes
            for index, site in enumerate(sites):
                cluster, weights = models[site.name]
                announced = transport.announced(site.name)
                started = time.perf_counter()
                if announced.get("update_kind") == "moments":
                    update, site_metrics = moments_update(site, cluster, announced)
                    seconds.append(time.perf_counter() - started)
                    moments_sizes.append(moments_meter.size(update, round_, site_metrics))
                else:
                    result = learner.train(
                        weights,
                        site.train,
                        round_seed(seed, round_, index),
                        **standardisation_of(announced),
                    )
                    seconds.append(time.perf_counter() - started)
                    delta = {
                        k: result.state[k] - np.asarray(weights[k], np.float32) for k in weights
                    }
                    update = SiteUpdate(site.name, delta, result.n_samples, cluster)
                    site_metrics = result.metrics
                    if first_delta_round:
                        sizes.append(meter.size(update, round_, site_metrics))
                updates.append(update)
                metrics[site.name] = site_metrics
                if tick:
                    tick()
            started = time.perf_counter()
            transport.exchange(round_, updates, metrics)
            elapsed += max(seconds) + (time.perf_counter() - started)
            models = transport.models_for(names)
            pooled, _ = _score_models(learner, models, sites, test_labels)
            clusters = len({cluster for cluster, _ in models.values()})
            score = validation_score(learner, models, sites)
            if score is not None:
                kept = best.offer(Candidate(f"r{round_}", round_, score))
                if kept is not best:
                    best, best_models = kept, models
            norms = tuple(  # of deltas: a moments round's sums are no step of the head
                float(
                    np.sqrt(sum(np.sum(np.square(v, dtype=np.float64)) for v in u.delta.values()))
                )
                for u in updates
                if not any(name.startswith("moments.") for name in u.delta)
            )
            history.append(
                RoundRecord(round_, pooled.f1, pooled.accuracy, elapsed, clusters, norms, score)
            )
        final, per_site = _score_models(learner, transport.models_for(names), sites, test_labels)
        extra = transport.describe()
    finally:
        transport.close()
    if moments_sizes:
        extra["moments_bytes_up"] = int(np.mean(moments_sizes))
    run = MethodRun(
        name, history, final, per_site, int(np.mean(sizes)) if sizes else None, start_s, extra
    )
    if best_models is not None:
        run.best_validated, _ = _score_models(learner, best_models, sites, test_labels)
        run.best_round = best.best.round
    return run


def run_independent(
    name: str,
    learner: Learner,
    train_sets: Sequence[ArrayDataset],
    eval_sites: Sequence[SiteData],
    model_of_site: Sequence[int],
    test_labels: np.ndarray,
    rounds: int,
    seed: int,
    average_sites: bool,
    start_s: float = 0.0,
    tick: Tick | None = None,
) -> MethodRun:
    """Models that never aggregate: ``local`` (one per site) and ``central`` (one, pooled data).

    Round r trains every model for the same local epochs from its own round r-1
    weights; ``model_of_site[i]`` says which model scores site i's test views.
    ``average_sites`` reports the mean of the sites' metrics (``local``)
    instead of the pooled ones.
    """
    weights = [learner.initial() for _ in train_sets]
    history: list[RoundRecord] = []
    elapsed = start_s

    def scored():
        pooled, per_site = score_sites(
            lambda i: learner.predict(weights[model_of_site[i]], eval_sites[i].test),
            eval_sites,
            test_labels,
            learner.n_classes,
        )
        return (mean_metrics(per_site) if average_sites else pooled), per_site

    for round_ in range(1, rounds + 1):
        seconds = []
        for index, data in enumerate(train_sets):
            started = time.perf_counter()
            weights[index] = learner.train(
                weights[index], data, round_seed(seed, round_, index)
            ).state
            seconds.append(time.perf_counter() - started)
            if tick:
                tick()
        elapsed += max(seconds)
        metrics, _ = scored()
        history.append(RoundRecord(round_, metrics.f1, metrics.accuracy, elapsed, len(train_sets)))
    final, per_site = scored()
    return MethodRun(name, history, final, per_site, None, start_s)
