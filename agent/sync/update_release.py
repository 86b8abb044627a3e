"""Release a trained delta: shape it (DP, the cloud's norm bound), seal and sign it, queue it.

A closed-form round's statistics, and a standardised FTL federation's feature
moments, are shaped their own way: no norm bound (the cloud bounds each
embedding instead), DP noise on every released number with DP on, and sent
fp32 (``protocol.messages.STATISTICS_CODEC``).

    UpdateRelease(...).release(plan, result) -> RoundOutcome

The update, its privacy charge and its training-log line are committed in one
transaction; ``Outbox``'s UNIQUE (round, cluster) makes a second release for the
same round (serve and ``ftl-agent train`` at once, say) a skip instead of a
second send. The outbox sender publishes it (``sync.outbox_sender``).
"""

from __future__ import annotations

import logging
import math
import secrets
import sqlite3
import time
import uuid

import numpy as np

from ftlct.agent.logs import log_event
from ftlct.agent.privacy import mechanism as privacy
from ftlct.agent.privacy.ledger import PrivacyLedger
from ftlct.agent.settings import PrivacySettings
from ftlct.agent.store.database import Database
from ftlct.agent.sync.outbox import MadeUpdate, Outbox
from ftlct.agent.sync.round_plan import RoundOutcome, RoundPlan, skipped
from ftlct.agent.sync.training_log import TrainingLog
from ftlct.agent.training.local_round import LocalRoundResult
from ftlct.export.closed_form_head import HeadStatistics, privatise, sensitivity
from ftlct.export.feature_moments import FeatureMoments, privatise_moments
from ftlct.export.tensors import Weights
from ftlct.protocol.exchange import build_update
from ftlct.protocol.identity import Identity
from ftlct.protocol.messages import MAX_METRICS, STATISTICS_CODEC
from ftlct.protocol.topics import Topics
from ftlct.protocol.validation_report import PREFIX as REPORT_PREFIX

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


def shape_statistics(
    statistics: Weights, clip_norm: float | None, settings: PrivacySettings
) -> tuple[Weights, int | None, dict[str, float]]:
    """With DP on: Gaussian noise of std ``z * sqrt(C^4 + C^2 + 1)`` on every number
    (``closed_form_head.privatise``), and the weight the noised counts imply (the exact
    slice count would leak); else the statistics as they are, weight None (unchanged)."""
    if not settings.enabled:
        return statistics, None, {}
    if clip_norm is None:
        raise ValueError("DP on statistics needs each embedding clipped (recipe.embedding_clip)")
    stats = HeadStatistics.from_arrays(statistics)
    rng = np.random.default_rng(secrets.randbits(128))
    noised = privatise(stats, clip_norm, settings.noise_multiplier, rng)
    weight = max(1, round(noised.n))
    return (
        noised.to_arrays(),
        weight,
        {"dp_noise_std": settings.noise_multiplier * sensitivity(clip_norm)},
    )


def shape_moments(
    moments: Weights, clip_norm: float | None, settings: PrivacySettings
) -> tuple[Weights, int | None, dict[str, float]]:
    """``shape_statistics`` for feature moments: the same noise (``sqrt(C^4 + C^2 + 1)``
    bounds what one clipped slice changes) and the weight the noised count implies."""
    if not settings.enabled:
        return moments, None, {}
    if clip_norm is None:
        raise ValueError("DP on moments needs each embedding clipped (recipe.embedding_clip)")
    rng = np.random.default_rng(secrets.randbits(128))
    noised = privatise_moments(
        FeatureMoments.from_arrays(moments), clip_norm, settings.noise_multiplier, rng
    )
    return (
        noised.to_arrays(),
        max(1, round(noised.count)),
        {"dp_noise_std": settings.noise_multiplier * sensitivity(clip_norm)},
    )


SHAPERS = {"statistics": shape_statistics, "moments": shape_moments}


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
        kind = plan.recipe.update_kind
        n_samples = result.n_samples
        if kind in SHAPERS:
            delta, weight, shaping = SHAPERS[kind](
                result.delta, plan.recipe.embedding_clip, self.privacy
            )
            n_samples = weight or n_samples
        else:
            delta, shaping = shape_delta(result.delta, plan.recipe.max_delta_norm, self.privacy)
        metrics = {**result.metrics, **shaping}
        # With DP on, only data-independent numbers travel: the guarantee covers the delta only
        # (a statistics update's slice count is in its noised counts: none travels beside it).
        if self.privacy.enabled:
            allowed = DP_METRICS if kind == "delta" else ()
            sent = {k: metrics[k] for k in allowed if k in metrics}
        else:
            sent = metrics
        sent = {k: float(v) for k, v in sent.items() if math.isfinite(v)}
        if len(sent) > MAX_METRICS:  # the validation report goes first: the rest says more
            sent = {k: v for k, v in sent.items() if not k.startswith(REPORT_PREFIX)}
        # a statistics or moments update's weight is its noised count already; a delta's count
        # goes bucketed with DP on (sent_sample_count)
        wire_samples = n_samples if kind != "delta" else sent_sample_count(n_samples, self.privacy)
        update_id = uuid.uuid4().hex
        payload = build_update(
            self.identity,
            plan.federation,
            round=plan.round,
            base_version=plan.model.version,
            cluster=plan.cluster,
            n_samples=wire_samples,
            delta=delta,
            metrics=sent,
            codec=plan.recipe.codec,
            update_id=update_id,
            kind=kind,
        )
        update = MadeUpdate(
            update_id=update_id,
            round=plan.round,
            cluster=plan.cluster,
            base_version=plan.model.version,
            n_samples=n_samples,
            codec=plan.recipe.codec if kind == "delta" else STATISTICS_CODEC,
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
            n_samples=n_samples,
            kind=kind,
            bytes=len(payload),
            **{k: round(v, 4) for k, v in metrics.items() if k.startswith(("val_", "global_"))},
        )
        return RoundOutcome("trained", "", plan.round, update_id, n_samples, metrics)
