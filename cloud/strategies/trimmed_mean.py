"""Coordinate-wise trimmed mean (Yin et al. 2018), per cluster, unweighted.

For each coordinate the ``k = floor(beta * n)`` largest and ``k`` smallest of
the ``n`` site values are dropped and the rest averaged; ``k`` is capped so
at least one value stays.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ftlct.cloud.strategies.base import FederationState, SiteUpdate, Strategy
from ftlct.cloud.strategies.server_optimizer import server_optimizer
from ftlct.cloud.strategies.strategy_utils import coordinatewise_means


def trimmed_mean(stacked: np.ndarray, beta: float) -> np.ndarray:
    """Mean over axis 0 after dropping ``floor(beta * n)`` values at each end, per coordinate."""
    n = stacked.shape[0]
    k = min(int(np.floor(beta * n)), (n - 1) // 2)
    ordered = np.sort(stacked, axis=0)
    return ordered[k : n - k].mean(axis=0)


class TrimmedMean(Strategy):
    name = "trimmed_mean"

    def __init__(self, beta: float = 0.2, **server):
        if not 0.0 <= beta < 0.5:
            raise ValueError(f"beta must be in [0, 0.5), got {beta}")
        self.beta = beta
        self.server = server_optimizer(**server)  # see server_optimizer.py

    def aggregate(self, state: FederationState, updates: Sequence[SiteUpdate]) -> FederationState:
        means, participants = coordinatewise_means(
            state, updates, lambda stacked: trimmed_mean(stacked, self.beta), self.check_update
        )
        return self.server.advance(state, means, participants)
