"""The federation's current global models, held in memory by the running cloud.

Loaded once from the state store when the round loop starts and replaced
after each aggregation has committed, so checking an update's shapes or
publishing a model never decodes weights from the database. Only the round
loop makes new models, so the copy cannot go stale.
"""

from __future__ import annotations

from dataclasses import dataclass

from ftlct.cloud.state.models import ModelStore
from ftlct.cloud.strategies import FederationState
from ftlct.export.tensors import Weights


@dataclass(frozen=True)
class CurrentModels:
    state: FederationState  # weights of every live cluster, membership, strategy extras
    versions: dict[str, str]  # cluster -> current version

    @classmethod
    def load(cls, models: ModelStore) -> CurrentModels | None:
        """The committed current state; None before the federation is created."""
        loaded = models.federation_state()
        return None if loaded is None else cls(*loaded)

    def weights(self, cluster: str) -> Weights:
        return self.state.models[cluster]
