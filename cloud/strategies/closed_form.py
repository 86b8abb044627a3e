"""Closed-form FTL (Fed3R, Fanì et al. ICML 2024): sites send statistics, the cloud solves the head.

An update's tensors are a site's sufficient statistics
(``ftlct.export.closed_form_head``: the Gram matrix's upper triangle, per-class
sums, per-class counts) instead of a delta. The strategy sums them per
cluster and replaces the cluster's head by the head solved from the sum: the
centralised solution in one round, whatever the label skew. Sums are
streamed, so memory is O(clusters x D^2), not O(sites).

The rounds announce ``update_kind = "statistics"`` (so sites send
``site_statistics(...).to_arrays()`` instead of training), the solver and
``max_embedding_norm``: each site clips every embedding to it, and the cloud
refuses statistics that no set of clipped embeddings could give (a trace of
the Gram matrix above ``C^2`` per counted slice, a class sum longer than ``C``
per slice of the class): the statistics' counterpart of the delta norm bound,
so one huge vector cannot steer the head. ``n_samples`` is checked against
the counts the statistics claim (a site cannot weigh more than the slices it
summed, up to the DP noise it may add), and a site whose weight the cloud
bounds below its count (``n_samples`` as the cloud hands it over) has its
statistics scaled down to that weight: its class means and covariance stay,
its share of the sum shrinks. Only then is the head the pooled one exactly.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ftlct.cloud.strategies.base import FederationState, SiteUpdate, Strategy
from ftlct.cloud.strategies.strategy_utils import (
    UpdateMismatch,
    check_updates,
    copy_weights,
    dp_count_slack,
    next_state,
    open_sums,
)
from ftlct.export.closed_form_head import SOLVERS, HeadStatistics, StatisticsError, solve_head

# the multi-layer embedding's norms are ~20-25 (max ~90 on covid-ct): a bound, not a clip
DEFAULT_MAX_EMBEDDING_NORM = 200.0


class ClosedForm(Strategy):
    name = "closed_form"
    update_kind = "statistics"

    def __init__(
        self,
        solver: str = "discriminant",
        shrinkage: float = 0.5,
        max_embedding_norm: float = DEFAULT_MAX_EMBEDDING_NORM,
    ):
        # checked now, not at the first round
        if solver not in SOLVERS:
            raise ValueError(f"solver must be one of {', '.join(SOLVERS)}, got {solver!r}")
        if not shrinkage > 0 or (solver == "discriminant" and shrinkage > 1.0):
            raise ValueError(f"shrinkage must be > 0 (at most 1 for discriminant), got {shrinkage}")
        if not 0 < max_embedding_norm < 1e6:
            raise ValueError(f"max_embedding_norm must be in (0, 1e6), got {max_embedding_norm}")
        self.solver = solver
        self.shrinkage = shrinkage
        self.max_embedding_norm = float(max_embedding_norm)

    def round_training(self, state: FederationState | None = None) -> dict:
        return {
            "update_kind": self.update_kind,
            "solver": self.solver,
            "shrinkage": self.shrinkage,
            "max_embedding_norm": self.max_embedding_norm,
        }

    def start_probe(self, weights) -> SiteUpdate:
        """Statistics of one unit vector per class (the head must be linear: ``dense.0.*``)."""
        n_classes, dim = np.shape(weights.get("dense.0.weight", np.zeros((0, 0))))
        stats = HeadStatistics(np.eye(dim) * n_classes, np.eye(n_classes, dim), np.ones(n_classes))
        return SiteUpdate("start-check", stats.to_arrays(), n_classes)

    def check_update(self, state: FederationState, update: SiteUpdate) -> None:
        """Statistics that fit the cluster's head, with a weight no larger than their counts."""
        stats = open_sums(state, update, HeadStatistics.from_arrays, StatisticsError)
        head = state.models[update.cluster]
        shape = np.shape(head.get("dense.0.weight"))
        if len(head) != 2 or shape != (stats.n_classes, stats.dim):
            raise UpdateMismatch(
                "shape_mismatch",
                f"update from {update.site}: statistics of {stats.n_classes} classes x "
                f"{stats.dim} dims do not fit the cluster's head {shape}",
            )
        claimed = stats.n  # DP noise moves the counts by a few units
        if not 0 < update.n_samples <= claimed + dp_count_slack(claimed):
            raise UpdateMismatch(
                "bad_samples",
                f"update from {update.site}: n_samples {update.n_samples} but its "
                f"statistics count {claimed:.0f} slices",
            )
        bound = self.max_embedding_norm
        trace = float(np.trace(stats.gram))
        if trace > bound**2 * (claimed + dp_count_slack(claimed)):
            raise UpdateMismatch(
                "norm_bound",
                f"update from {update.site}: its Gram trace {trace:.4g} needs embeddings "
                f"longer than max_embedding_norm {bound:g} for {claimed:.0f} slices",
            )
        lengths = np.linalg.norm(stats.class_sums, axis=1)
        counts = np.maximum(stats.class_counts, 0.0)
        if (lengths > bound * (counts + dp_count_slack(counts))).any():
            raise UpdateMismatch(
                "norm_bound",
                f"update from {update.site}: a class sum is longer than max_embedding_norm "
                f"{bound:g} times its count",
            )

    def aggregate(self, state: FederationState, updates: Sequence[SiteUpdate]) -> FederationState:
        totals: dict[str, HeadStatistics] = {}
        participants: dict[str, str] = {}
        for update in check_updates(state, updates, self.check_update):
            stats = _weighted(HeadStatistics.from_arrays(update.delta), update.n_samples)
            total = totals.get(update.cluster)
            totals[update.cluster] = stats if total is None else total + stats
            participants[update.site] = update.cluster
        models = {cluster: copy_weights(w) for cluster, w in state.models.items()}
        for cluster, total in totals.items():
            try:
                models[cluster] = solve_head(total, self.solver, self.shrinkage)
            except StatisticsError as exc:  # e.g. every site of the cluster holds one class
                raise ValueError(f"cluster {cluster}: {exc}") from exc
        return next_state(state, models, participants)


def _weighted(stats: HeadStatistics, weight: float) -> HeadStatistics:
    """``stats`` scaled to ``weight`` slices when the cloud bounds the site below its count."""
    if not 0 < weight < stats.n:
        return stats
    scale = weight / stats.n
    return HeadStatistics(stats.gram * scale, stats.class_sums * scale, stats.class_counts * scale)
