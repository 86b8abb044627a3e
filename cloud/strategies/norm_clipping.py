"""Norm clipping: scale each site's delta to at most ``max_norm`` (L2), then aggregate.

A wrapper, so it composes with any strategy (``make_strategy("cfl",
clip_norm=1.0)``); alone (``norm_clipping``) it wraps FedAvg. Bounding each
site's contribution limits what one faulty or malicious site can do to the
mean (Sun et al. 2019, "Can you really backdoor federated learning?").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from ftlct.cloud.strategies.base import FederationState, SiteUpdate, Strategy
from ftlct.cloud.strategies.fedavg import FedAvg
from ftlct.cloud.strategies.strategy_utils import clip_to_norm


class NormClipping(Strategy):
    def __init__(self, max_norm: float, inner: Strategy | None = None):
        if max_norm <= 0:
            raise ValueError(f"max_norm must be > 0, got {max_norm}")
        self.max_norm = max_norm
        self.inner = inner or FedAvg()
        self.name = f"{self.inner.name}+clip"

    def aggregate(self, state: FederationState, updates: Sequence[SiteUpdate]) -> FederationState:
        if self.inner.update_kind_for(state) != "delta":  # FTL's moments round: nothing to clip
            return self.inner.aggregate(state, updates)
        clipped = (replace(u, delta=clip_to_norm(u.delta, self.max_norm)) for u in updates)
        return self.inner.aggregate(state, _LazySequence(clipped))

    def update_kind_for(self, state: FederationState | None) -> str:
        return self.inner.update_kind_for(state)

    def round_training(self, state: FederationState | None = None) -> dict:
        return self.inner.round_training(state)

    def start_probe(self, weights) -> SiteUpdate:
        return self.inner.start_probe(weights)

    def check_update(self, state: FederationState, update: SiteUpdate) -> None:
        self.inner.check_update(state, update)

    def cluster_of(self, state: FederationState, site: str) -> str:
        return self.inner.cluster_of(state, site)


class _LazySequence(Sequence):
    """Iterate a generator once without materialising it (keeps FedAvg streaming)."""

    def __init__(self, items):
        self._items = items

    def __iter__(self):
        return iter(self._items)

    def __len__(self):  # pragma: no cover - strategies iterate, they do not count
        raise TypeError("length unknown for a streamed sequence")

    def __getitem__(self, index):  # pragma: no cover
        raise TypeError("a streamed sequence cannot be indexed")
