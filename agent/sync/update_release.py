"""Release a trained delta: shape it (DP, the cloud's norm bound), seal and sign it, queue it.

    UpdateRelease(...).release(plan, result) -> RoundOutcome

The update, its privacy charge and its training-log line are committed in one
transaction; ``Outbox``'s UNIQUE (round, cluster) makes a second release for the
same round (serve and ``ftl-agent train`` at once, say) a skip instead of a
second send. The outbox sender publishes it (``sync.outbox_sender``).
"""

from __future__ import annotations

import logging
import math
import sqlite3
import time
import uuid

from ftlct.agent.logs import log_event
from ftlct.agent.privacy import mechanism as privacy
from ftlct.agent.privacy.ledger import PrivacyLedger
from ftlct.agent.settings import PrivacySettings
from ftlct.agent.store.database import Database
from ftlct.agent.sync.outbox import MadeUpdate, Outbox
from ftlct.agent.sync.round_plan import RoundOutcome, RoundPlan, skipped
from ftlct.agent.sync.training_log import TrainingLog
from ftlct.agent.training.local_round import LocalRoundResult
from ftlct.export.tensors import Weights
from ftlct.protocol.exchange import build_update
from ftlct.protocol.identity import Identity
from ftlct.protocol.topics import Topics

log = logging.getLogger(__name__)

DP_METRICS = ("epochs", "n_train")  # data-independent: all that travels with DP on


def sent_sample_count(n_samples: int, settings: PrivacySettings) -> int:
    """The count the update carries: exact without DP; with DP, rounded to the nearest
    multiple of ``privacy.sample_count_bucket`` (at least one bucket), because the exact
    count is data-dependent and outside the noise (the cloud uses it only as a bounded
    aggregation weight)."""
    if not settings.enabled:
        return n_samples
    bucket = settings.sample_count_bucket
    return max(bucket, round(n_samples / bucket) * bucket)


def shape_delta(
    delta: Weights, max_delta_norm: float | None, settings: PrivacySettings
) -> tuple[Weights, dict[str, float]]:
    """DP clip + noise when enabled; then the cloud's norm bound (post-processing keeps DP)."""
    info: dict[str, float] = {}
    if settings.enabled:
        delta, norm = privacy.clip_l2(delta, settings.clip_norm)
        info["delta_norm_raw"] = norm
        delta = privacy.add_gaussian_noise(delta, settings.noise_multiplier * settings.clip_norm)
    if max_delta_norm is not None:
        delta, norm = privacy.clip_l2(delta, max_delta_norm * 0.999)
        info.setdefault("delta_norm_raw", norm)
    info["delta_norm"] = privacy.l2_norm(delta)
    return delta, info


class UpdateRelease:
    def __init__(
        self,
        db: Database,
        identity: Identity,
        privacy_settings: PrivacySettings,
        outbox: Outbox,
        ledger: PrivacyLedger,
        training_log: TrainingLog,
    ):
        self.db = db
        self.identity = identity
        self.privacy = privacy_settings
        self.outbox = outbox
        self.ledger = ledger
        self.training_log = training_log

    def release(self, plan: RoundPlan, result: LocalRoundResult) -> RoundOutcome:
        """Seal ``result`` as this site's update for ``plan``'s round and queue it."""
        delta, shaping = shape_delta(result.delta, plan.recipe.max_delta_norm, self.privacy)
        metrics = {**result.metrics, **shaping}
        # With DP on, only data-independent numbers travel: the guarantee covers the delta only.
        sent = (
            {k: metrics[k] for k in DP_METRICS if k in metrics} if self.privacy.enabled else metrics
        )
        sent = {k: float(v) for k, v in sent.items() if math.isfinite(v)}
        update_id = uuid.uuid4().hex
        payload = build_update(
            self.identity,
            plan.federation,
            round=plan.round,
            base_version=plan.model.version,
            cluster=plan.cluster,
            n_samples=sent_sample_count(result.n_samples, self.privacy),
            delta=delta,
            metrics=sent,
            codec=plan.recipe.codec,
            update_id=update_id,
        )
        update = MadeUpdate(
            update_id=update_id,
            round=plan.round,
            cluster=plan.cluster,
            base_version=plan.model.version,
            n_samples=result.n_samples,
            codec=plan.recipe.codec,
            metrics=metrics,
            topic=Topics(plan.federation).updates(plan.site),
            payload=payload,
        )
        now = time.time()
        try:
            with self.db.transaction() as conn:
                self.outbox.queue(conn, update, now)
                if self.privacy.enabled:
                    self.ledger.charge(conn, update_id, plan.round, plan.rho, self.privacy, now)
                self.training_log.record(plan.round, "trained", "", metrics, conn=conn, now=now)
        except sqlite3.IntegrityError:
            return skipped(f"already made this site's update for round {plan.round}", plan.round)
        log_event(
            log,
            "update_queued",
            round=plan.round,
            cluster=plan.cluster,
            update_id=update_id,
            n_samples=result.n_samples,
            bytes=len(payload),
            **{k: round(v, 4) for k, v in metrics.items() if k.startswith(("val_", "global_"))},
        )
        return RoundOutcome("trained", "", plan.round, update_id, result.n_samples, metrics)
