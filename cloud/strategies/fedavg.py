"""FedAvg (McMahan et al. 2017): the sample-weighted mean of the site deltas, per cluster.

Streaming: one running weighted sum per cluster, so memory is O(clusters x
model) however many sites answer, and ``updates`` may be a lazy sequence that
decodes one update at a time.
"""

from __future__ import annotations

from collections.abc import Sequence

from ftlct.cloud.strategies.base import FederationState, SiteUpdate, Strategy
from ftlct.cloud.strategies.strategy_utils import (
    WeightedSum,
    apply_delta,
    check_updates,
    copy_weights,
    next_state,
)


class FedAvg(Strategy):
    """``global_c += server_lr * sum(n_i * delta_i) / sum(n_i)`` over the sites of cluster c."""

    name = "fedavg"

    def __init__(self, server_lr: float = 1.0):
        if server_lr <= 0:
            raise ValueError(f"server_lr must be > 0, got {server_lr}")
        self.server_lr = server_lr

    def check_update(self, update: SiteUpdate) -> None:
        """Hook for stricter siblings (FTL); FedAvg accepts any tensors the model has."""

    def aggregate(self, state: FederationState, updates: Sequence[SiteUpdate]) -> FederationState:
        sums: dict[str, WeightedSum] = {}
        participants: dict[str, str] = {}
        for update in check_updates(state, updates):
            self.check_update(update)
            sums.setdefault(update.cluster, WeightedSum()).add(update.delta, update.n_samples)
            participants[update.site] = update.cluster
        models = {cluster: copy_weights(w) for cluster, w in state.models.items()}
        for cluster, running in sums.items():
            models[cluster] = apply_delta(state.models[cluster], running.mean(), self.server_lr)
        return next_state(state, models, participants)
