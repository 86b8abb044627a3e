"""One local round of the site: plan it (no torch), train the head, put the signed delta in the outbox.

    plan_round(settings, db, data_root)  -> RoundPlan, or RoundOutcome(skipped, reason)
    run_local_round(settings, data_root) -> RoundOutcome (trained, skipped or failed)

``serve`` plans every few seconds (cheap SQL) and runs the round in a child
process only when the plan says it can (``training.runner``); ``ftl-agent train``
runs it in its own process. A round is skipped, with the reason recorded,
when: no round was announced or it is finished; this site already sent its
update for the round; the round's base global model has not arrived; there
are fewer than ``training.min_samples`` labelled slices; or the privacy budget
would be exceeded. torch is imported only past all of these checks.

The update, its ledger row and its privacy cost are committed in one
transaction; the UNIQUE (round, cluster) row makes a second run for the same
round (serve and ``train`` at once, say) fail instead of sending twice.
"""

from __future__ import annotations

import logging
import math
import sqlite3
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ftlct.agent.labels.label_store import SCHEMA as LABELS_SCHEMA
from ftlct.agent.logs import log_event
from ftlct.agent.privacy import mechanism as privacy
from ftlct.agent.privacy.ledger import PrivacyLedger
from ftlct.agent.settings import AgentSettings
from ftlct.agent.store.database import Database
from ftlct.agent.store.layout import DataDir
from ftlct.agent.sync.outbox import MadeUpdate, Outbox
from ftlct.agent.sync.received_messages import ReceivedMessages
from ftlct.agent.sync.site_identity import federation_names, site_identity
from ftlct.agent.sync.training_log import TrainingLog
from ftlct.agent.training.labelled_data import count_labelled, holdout_split, labelled_data
from ftlct.agent.training.metrics import classification_metrics
from ftlct.agent.training.recipe import Recipe, recipe_for
from ftlct.export.head_onnx import numpy_head_logits
from ftlct.protocol.exchange import build_update
from ftlct.protocol.messages import GlobalModel, RoundAnnouncement
from ftlct.protocol.topics import Topics

log = logging.getLogger(__name__)


@dataclass
class RoundOutcome:
    outcome: str  # trained, skipped, failed
    reason: str = ""
    round: int | None = None
    update_id: str | None = None
    n_samples: int = 0
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def trained(self) -> bool:
        return self.outcome == "trained"

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class RoundPlan:
    site: str
    federation: str
    announcement: RoundAnnouncement
    cluster: str
    model: GlobalModel
    recipe: Recipe
    n_labelled: int
    rho: float  # privacy cost of this round's release (0 without DP)


def _skip(reason: str, round_no: int | None = None) -> RoundOutcome:
    return RoundOutcome("skipped", reason, round_no)


def plan_round(settings: AgentSettings, db: Database, data_root: Path) -> RoundPlan | RoundOutcome:
    """Whether this site can train now, and on what; cheap and torch-free."""
    received = ReceivedMessages(db)
    site, federation = federation_names(settings, db)
    if not site or not federation:
        return _skip("no site/federation configured (serve with --site and --federation once)")
    announcement = received.load_round()
    if announcement is None:
        return _skip("no round announced yet (the agent has not reached the broker)")
    number = announcement.round
    if announcement.status != "open":
        return _skip(f"round {number} is finished; waiting for the next round", number)
    cluster = announcement.cluster_for(site)
    base = announcement.base_version_for(site)
    if Outbox(db).made_for(number, cluster):
        return _skip(f"already made this site's update for round {number}", number)
    model = received.load_model(cluster)
    if model is None or model.version != base:
        have = model.version if model else "none"
        return _skip(f"round {number} trains from {base}; global model received: {have}", number)
    n_labelled = count_labelled(data_root, model.backbone_sha256)
    needed = settings.training.min_samples
    if n_labelled < needed:
        return _skip(
            f"{n_labelled} labelled slices, training needs at least {needed} "
            "(ftl-agent label import / label set)",
            number,
        )
    p = settings.privacy
    rho = privacy.rho_per_release(p.noise_multiplier) if p.enabled else 0.0
    if p.enabled:
        budget = privacy.Budget(PrivacyLedger(db).rho_spent(), p.delta, p.epsilon_limit)
        if not budget.allows(rho):
            return _skip(
                f"privacy budget exhausted: epsilon {budget.epsilon_spent:.3f} spent, one more "
                f"round would reach {budget.epsilon_after(rho):.3f} > limit {p.epsilon_limit:g}",
                number,
            )
    return RoundPlan(
        site,
        federation,
        announcement,
        cluster,
        model,
        recipe_for(settings.training, announcement.training),
        n_labelled,
        rho,
    )


def run_local_round(settings: AgentSettings, data_root: Path) -> RoundOutcome:
    """Plan, train and queue one update; the outcome is also recorded in ``training_runs``."""
    layout = DataDir(Path(data_root))
    if not layout.index.is_file():
        return _skip(f"no agent data in {layout.root} (run `ftl-agent serve` there first)")
    db = Database(layout.index, create=False)
    try:
        db.ensure(LABELS_SCHEMA)
        PrivacyLedger(db).remember(settings.privacy)
        plan = plan_round(settings, db, layout.root)
        if isinstance(plan, RoundOutcome):
            outcome = plan
        else:
            try:
                outcome = _train(settings, db, layout.root, plan)
            except sqlite3.IntegrityError:
                outcome = _skip(
                    f"already made this site's update for round {plan.announcement.round}",
                    plan.announcement.round,
                )
            except Exception as exc:  # a bad head, a bad setting: recorded, serve carries on
                outcome = RoundOutcome(
                    "failed", f"{type(exc).__name__}: {exc}", plan.announcement.round
                )
        if outcome.outcome != "trained":
            TrainingLog(db).record(outcome.round, outcome.outcome, outcome.reason, outcome.metrics)
        return outcome
    finally:
        db.close()


def _train(settings: AgentSettings, db: Database, data_root: Path, plan: RoundPlan) -> RoundOutcome:
    t = settings.training
    number = plan.announcement.round
    data = labelled_data(data_root, db, plan.model.backbone_sha256, plan.model.labels)
    if len(data) < t.min_samples:
        return _skip(
            f"{len(data)} labelled slices, training needs at least {t.min_samples}", number
        )
    train_idx, val_idx = holdout_split(data, t.val_fraction, t.seed)
    train, val = data.take(train_idx), data.take(val_idx)
    n_classes = len(plan.model.labels)

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
        seed=t.seed + number,  # a different shuffle each round, reproducible
        val_fraction=0.0,  # held out by series above
    )
    result = train_head(plan.model.weights, train.vectors, train.labels, n_classes, config)
    metrics = {k: float(v) for k, v in result.metrics.items() if math.isfinite(v)}
    metrics.update(_validation(plan.model.weights, result.weights, val, n_classes))
    metrics["n_series"] = float(data.n_series)

    delta, shaping = _shape_delta(result.delta, plan, settings)
    metrics.update(shaping)
    # With DP on, only data-independent numbers travel: the guarantee covers the delta only.
    sent = {k: metrics[k] for k in ("epochs", "n_train")} if settings.privacy.enabled else metrics
    update_id = uuid.uuid4().hex
    identity = site_identity(data_root, plan.site)
    payload = build_update(
        identity,
        plan.federation,
        round=number,
        base_version=plan.model.version,
        cluster=plan.cluster,
        n_samples=result.n_samples,
        delta=delta,
        metrics=sent,
        codec=plan.recipe.codec,
        update_id=update_id,
    )
    _queue_update(db, plan, update_id, payload, result.n_samples, metrics, settings)
    log_event(
        log,
        "update_queued",
        round=number,
        cluster=plan.cluster,
        update_id=update_id,
        n_samples=result.n_samples,
        bytes=len(payload),
        **{k: round(v, 4) for k, v in metrics.items() if k.startswith(("val_", "global_"))},
    )
    return RoundOutcome("trained", "", number, update_id, result.n_samples, metrics)


def _validation(global_weights, local_weights, val, n_classes: int) -> dict[str, float]:
    """Held-out scores of the new local head and of the global head it started from."""
    if len(val) == 0:
        return {"n_val": 0.0}
    out = {"n_val": float(len(val))}
    for prefix, weights in (("val", local_weights), ("global_val", global_weights)):
        predicted = numpy_head_logits(weights, val.vectors).argmax(axis=1)
        scores = classification_metrics(val.labels, predicted, n_classes)
        out[f"{prefix}_accuracy"] = scores.accuracy
        out[f"{prefix}_f1"] = scores.f1
    return out


def _shape_delta(delta, plan: RoundPlan, settings: AgentSettings) -> tuple[dict, dict[str, float]]:
    """DP clip + noise when enabled; then the cloud's norm bound (post-processing keeps DP)."""
    info: dict[str, float] = {}
    p = settings.privacy
    if p.enabled:
        delta, norm = privacy.clip_l2(delta, p.clip_norm)
        info["delta_norm_raw"] = norm
        delta = privacy.add_gaussian_noise(delta, p.noise_multiplier * p.clip_norm)
    if plan.recipe.max_delta_norm is not None:
        delta, norm = privacy.clip_l2(delta, plan.recipe.max_delta_norm * 0.999)
        info.setdefault("delta_norm_raw", norm)
    info["delta_norm"] = privacy.l2_norm(delta)
    return delta, info


def _queue_update(db, plan: RoundPlan, update_id, payload, n_samples, metrics, settings) -> None:
    now = time.time()
    update = MadeUpdate(
        update_id=update_id,
        round=plan.announcement.round,
        cluster=plan.cluster,
        base_version=plan.model.version,
        n_samples=n_samples,
        codec=plan.recipe.codec,
        metrics=metrics,
        topic=Topics(plan.federation).updates(plan.site),
        payload=payload,
    )
    outbox, ledger, log_ = Outbox(db), PrivacyLedger(db), TrainingLog(db)
    with db.transaction() as conn:
        outbox.queue(conn, update, now)
        if settings.privacy.enabled:
            ledger.charge(conn, update_id, update.round, plan.rho, settings.privacy, now)
        log_.record(update.round, "trained", "", metrics, conn=conn, now=now)
