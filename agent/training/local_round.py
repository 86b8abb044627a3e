"""One local round of head training: from a plan (the round's global head and recipe) and the
site's labelled embeddings to ``(delta, n_samples, metrics)``; in a closed-form federation
the "delta" is the site's statistics (``training.closed_form``, no torch), in a standardised
FTL federation's first round its feature moments (``export.feature_moments``, no torch).

    train_local_round(plan, settings, data) -> LocalRoundResult   # torch, in the child process
    train_from_data_dir(plan, settings, data_root) -> LocalRoundResult | NoResult

Nothing here plans a round, signs, queues or sends: ``ftlct.agent.sync`` makes the
plan once (``sync.round_plan``), runs this (``training.runner`` in a child process
under serve, in process for ``ftl-agent train``) and seals, signs and queues what
comes back (``sync.update_release``). torch is imported only once there is data.

The metrics carry the validation report (``protocol.validation_report``): the
confusion matrix of the round's base head on the held-out series, which the
cloud sums over sites to keep the best global version.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

from ftlct.agent.settings import TrainingSettings
from ftlct.agent.store.database import Database
from ftlct.agent.store.layout import DataDir
from ftlct.agent.training.labelled_data import LabelledData, holdout_split, labelled_data
from ftlct.agent.training.recipe import Recipe
from ftlct.export.head_onnx import numpy_head_logits
from ftlct.export.metrics import classification_metrics
from ftlct.export.tensors import Weights
from ftlct.protocol.messages import GlobalModel
from ftlct.protocol.validation_report import report_metrics

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainingPlan:
    """What one local round trains from: the round's number, global head and recipe."""

    round: int
    model: GlobalModel
    recipe: Recipe


@dataclass
class LocalRoundResult:
    """What training returns; sync seals it (``delta = local - global``)."""

    delta: Weights
    n_samples: int
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class NoResult:
    """A round that produced no delta, and why."""

    outcome: str  # "skipped" or "failed"
    reason: str


def train_local_round(
    plan: TrainingPlan, settings: TrainingSettings, data: LabelledData
) -> LocalRoundResult | NoResult:
    """Train the head from ``plan.model`` on ``data``; held-out series score it."""
    t = settings
    if len(data) < t.min_samples:
        return NoResult(
            "skipped", f"{len(data)} labelled slices, training needs at least {t.min_samples}"
        )
    train_idx, val_idx = holdout_split(data, t.val_fraction, t.seed)
    train, val = data.take(train_idx), data.take(val_idx)
    n_classes = len(plan.model.labels)
    if plan.recipe.update_kind == "statistics":
        from ftlct.agent.training.closed_form import statistics_round

        statistics, n_samples, metrics, own = statistics_round(plan.recipe, n_classes, train)
        metrics.update(_validation(plan.model.weights, own, val, n_classes))
        metrics["n_series"] = float(data.n_series)
        return LocalRoundResult(statistics, n_samples, metrics)
    if plan.recipe.update_kind == "moments":
        from ftlct.export.feature_moments import site_moments

        moments = site_moments(train.vectors, clip_norm=plan.recipe.embedding_clip)
        metrics = {"n_train": float(len(train)), "n_series": float(data.n_series)}
        metrics.update(_validation(plan.model.weights, None, val, n_classes))
        return LocalRoundResult(moments.to_arrays(), len(train), metrics)

    import torch  # only here: serve never imports torch itself

    from ftlct.agent.training.local_training import LocalTrainConfig, train_head

    torch.set_num_threads(max(1, t.threads))
    config = LocalTrainConfig(
        epochs=plan.recipe.epochs,
        lr=plan.recipe.lr,
        batch_size=plan.recipe.batch_size,
        weight_decay=t.weight_decay,
        optimizer=t.optimizer,
        class_weighting=t.class_weighting,
        fedprox_mu=plan.recipe.fedprox_mu,
        seed=t.seed + plan.round,  # a different shuffle each round, reproducible
        val_fraction=0.0,  # held out by series above
    )
    result = train_head(
        plan.model.weights,
        train.vectors,
        train.labels,
        n_classes,
        config,
        standardise=plan.recipe.standardisation,
    )
    metrics = {k: float(v) for k, v in result.metrics.items() if math.isfinite(v)}
    metrics.update(_validation(plan.model.weights, result.weights, val, n_classes))
    metrics["n_series"] = float(data.n_series)
    return LocalRoundResult(result.delta, result.n_samples, metrics)


def train_from_data_dir(
    plan: TrainingPlan, settings: TrainingSettings, data_root: Path
) -> LocalRoundResult | NoResult:
    """``train_local_round`` on the labelled embeddings of an agent data dir; an error is a
    ``NoResult("failed", ...)`` (a bad head, a bad setting: recorded, serve carries on)."""
    layout = DataDir(Path(data_root))
    try:
        db = Database(layout.index, create=False)
    except FileNotFoundError as exc:
        return NoResult("failed", str(exc))
    try:
        data = labelled_data(layout.root, db, plan.model.backbone_sha256, plan.model.labels)
        return train_local_round(plan, settings, data)
    except Exception as exc:
        log.exception("local round failed")
        return NoResult("failed", f"{type(exc).__name__}: {exc}")
    finally:
        db.close()


def _validation(global_weights, local_weights, val, n_classes: int) -> dict[str, float]:
    """Held-out scores of the new local head (if any) and of the global head it started from,
    with the latter's confusion matrix as the validation report."""
    if len(val) == 0:
        return {"n_val": 0.0}
    out = {"n_val": float(len(val))}
    for prefix, weights in (("val", local_weights), ("global_val", global_weights)):
        if weights is None:
            continue
        predicted = numpy_head_logits(weights, val.vectors).argmax(axis=1)
        scores = classification_metrics(val.labels, predicted, n_classes)
        out[f"{prefix}_accuracy"] = scores.accuracy
        out[f"{prefix}_f1"] = scores.f1
        if prefix == "global_val":
            out.update(report_metrics(scores.confusion_matrix))
    return out
