"""Coordinate-wise median of the deltas (Yin et al. 2018), per cluster, unweighted.

Robust to fewer than half of a cluster's sites sending arbitrary values.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ftlct.cloud.strategies.base import FederationState, SiteUpdate, Strategy
from ftlct.cloud.strategies.server_optimizer import server_optimizer
from ftlct.cloud.strategies.strategy_utils import coordinatewise_means


class CoordinateMedian(Strategy):
    name = "median"

    def __init__(self, **server):
        self.server = server_optimizer(**server)  # see server_optimizer.py

    def aggregate(self, state: FederationState, updates: Sequence[SiteUpdate]) -> FederationState:
        means, participants = coordinatewise_means(
            state, updates, lambda stacked: np.median(stacked, axis=0), self.check_update
        )
        return self.server.advance(state, means, participants)
