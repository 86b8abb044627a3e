"""Closed-form FTL (Fed3R, Fanì et al. ICML 2024): sites send statistics, the cloud solves the head.

An update's tensors are a site's sufficient statistics
(``ftlct.export.closed_form_head``: the Gram matrix's upper triangle, per-class
sums, per-class counts) instead of a delta. The strategy sums them per
cluster and replaces the cluster's head by the head solved from the sum: the
centralised solution in one round, whatever the label skew. Sums are
streamed, so memory is O(clusters x D^2), not O(sites). ``n_samples`` is
checked against the counts the statistics claim (a site cannot weigh more
than the slices it summed, up to the DP noise it may add).

Phase 2 wires it: the agent sends ``site_statistics(...).to_arrays()`` in
place of a delta when the round's strategy is ``closed_form``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ftlct.cloud.strategies.base import FederationState, SiteUpdate, Strategy
from ftlct.cloud.strategies.strategy_utils import (
    UpdateMismatch,
    check_updates,
    copy_weights,
    next_state,
)
from ftlct.export.closed_form_head import SOLVERS, HeadStatistics, StatisticsError, solve_head


class ClosedForm(Strategy):
    name = "closed_form"

    def __init__(self, solver: str = "discriminant", shrinkage: float = 0.5):
        # checked now, not at the first round
        if solver not in SOLVERS:
            raise ValueError(f"solver must be one of {', '.join(SOLVERS)}, got {solver!r}")
        if not shrinkage > 0 or (solver == "discriminant" and shrinkage > 1.0):
            raise ValueError(f"shrinkage must be > 0 (at most 1 for discriminant), got {shrinkage}")
        self.solver = solver
        self.shrinkage = shrinkage

    def check_update(self, state: FederationState, update: SiteUpdate) -> None:
        """Statistics that fit the cluster's head, with a weight no larger than their counts."""
        if update.cluster not in state.models:
            raise UpdateMismatch(
                "wrong_cluster",
                f"update from {update.site} names unknown cluster {update.cluster!r}",
            )
        try:
            stats = HeadStatistics.from_arrays(update.delta)
        except StatisticsError as exc:
            reason = "non_finite" if "non-finite" in str(exc) else "shape_mismatch"
            raise UpdateMismatch(reason, f"update from {update.site}: {exc}") from exc
        head = state.models[update.cluster]
        shape = np.shape(head.get("dense.0.weight"))
        if len(head) != 2 or shape != (stats.n_classes, stats.dim):
            raise UpdateMismatch(
                "shape_mismatch",
                f"update from {update.site}: statistics of {stats.n_classes} classes x "
                f"{stats.dim} dims do not fit the cluster's head {shape}",
            )
        claimed = stats.n  # DP noise moves the counts by a few units
        if not 0 < update.n_samples <= claimed + 3 * max(1.0, claimed) ** 0.5:
            raise UpdateMismatch(
                "bad_samples",
                f"update from {update.site}: n_samples {update.n_samples} but its "
                f"statistics count {claimed:.0f} slices",
            )

    def aggregate(self, state: FederationState, updates: Sequence[SiteUpdate]) -> FederationState:
        totals: dict[str, HeadStatistics] = {}
        participants: dict[str, str] = {}
        for update in check_updates(state, updates, self.check_update):
            stats = HeadStatistics.from_arrays(update.delta)
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
