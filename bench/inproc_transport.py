"""In-process transport: the cloud's strategy called directly, no broker in between."""

from __future__ import annotations

from collections.abc import Sequence

from ftlct.agent.training.local_training import Weights
from ftlct.bench.federation import Transport
from ftlct.cloud.strategies import DEFAULT_CLUSTER, FederationState, SiteUpdate, Strategy


class InProcessTransport(Transport):
    def __init__(self, strategy: Strategy):
        self.strategy = strategy
        self.state: FederationState | None = None

    def start(self, initial: Weights) -> None:
        self.state = FederationState(models={DEFAULT_CLUSTER: initial})

    def models_for(self, sites: Sequence[str]) -> dict[str, tuple[str, Weights]]:
        out = {}
        for site in sites:
            cluster = self.strategy.cluster_of(self.state, site)
            out[site] = (cluster, self.state.models[cluster])
        return out

    def announced(self, site: str) -> dict:
        training = self.strategy.round_training(self.state)
        training.setdefault("update_kind", self.strategy.update_kind_for(self.state))
        return training

    def exchange(self, round_: int, updates: list[SiteUpdate], metrics: dict[str, dict]) -> None:
        self.state = self.strategy.aggregate(self.state, updates)

    def describe(self) -> dict:
        state = self.state
        return {
            "strategy": self.strategy.name,
            "clusters": sorted(state.models),
            "membership": dict(sorted(state.membership.items())),
            "splits": state.extra.get("splits", []),
        }
