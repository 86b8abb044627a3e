"""Coordinate-wise median of the deltas (Yin et al. 2018), per cluster, unweighted.

Robust to fewer than half of a cluster's sites sending arbitrary values.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ftlct.cloud.strategies.base import FederationState, SiteUpdate, Strategy
from ftlct.cloud.strategies.strategy_utils import aggregate_coordinatewise


class CoordinateMedian(Strategy):
    name = "median"

    def __init__(self, server_lr: float = 1.0):
        self.server_lr = server_lr

    def aggregate(self, state: FederationState, updates: Sequence[SiteUpdate]) -> FederationState:
        return aggregate_coordinatewise(
            state, updates, lambda stacked: np.median(stacked, axis=0), self.server_lr
        )
