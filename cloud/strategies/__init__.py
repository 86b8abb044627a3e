"""Aggregation strategies: pure numpy, no MQTT (see ``base.py`` for the interface)."""

from ftlct.cloud.strategies.base import (
    DEFAULT_CLUSTER,
    FederationState,
    SiteUpdate,
    Strategy,
)
from ftlct.cloud.strategies.registry import STRATEGIES, make_strategy

__all__ = [
    "DEFAULT_CLUSTER",
    "STRATEGIES",
    "FederationState",
    "SiteUpdate",
    "Strategy",
    "make_strategy",
]
