"""The strategy interface: pure functions of (federation state, site updates) -> new state.

A strategy never sees MQTT, files or clocks; the cloud's round loop hands it
decoded updates and persists what it returns (the way Flower keeps ``Strategy``
apart from its ``Grid``). ``FederationState.round`` counts completed
aggregations: ``aggregate`` returns a state whose ``round`` is one more.
``check_update`` (below) is the check every update passes, here so that the
interface and its contract sit in one module that imports no other strategy.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ftlct.export.tensors import Weights

DEFAULT_CLUSTER = "global"


@dataclass(frozen=True)
class SiteUpdate:
    site: str
    delta: Weights  # local - global of the site's cluster
    n_samples: float  # the aggregation weight: the cloud passes the site's claim as it bounds it
    cluster: str = DEFAULT_CLUSTER


@dataclass
class FederationState:
    models: dict[str, Weights]  # cluster id -> global weights
    membership: dict[str, str] = field(default_factory=dict)  # site -> cluster id
    round: int = 0
    extra: dict = field(default_factory=dict)  # strategy-private, JSON-serialisable


class Strategy(ABC):
    """One aggregation rule. Subclasses set ``name`` and implement ``aggregate``."""

    name: str
    # what its sites send (protocol.messages.UPDATE_KINDS): a delta, or statistics (closed_form)
    update_kind: str = "delta"

    def update_kind_for(self, state: FederationState | None) -> str:
        """What sites send in the round that starts from ``state`` (FTL's moments round first)."""
        return self.update_kind

    def round_training(self, state: FederationState | None = None) -> dict:
        """Keys this strategy adds to the training config announced with the round that starts
        from ``state``."""
        return {}

    def start_probe(self, weights: Weights) -> SiteUpdate:
        """An update ``aggregate`` must take for a federation of ``weights`` (an all-zero
        delta); the cloud refuses to start a federation the strategy would always refuse."""
        return SiteUpdate("start-check", {k: np.zeros_like(v) for k, v in weights.items()}, 1)

    @abstractmethod
    def aggregate(self, state: FederationState, updates: Sequence[SiteUpdate]) -> FederationState:
        """The state after one round: new global weights per cluster, membership, ``round + 1``.

        ``state`` is not modified. Clusters without updates keep their weights.
        Raises ``ValueError`` for updates that do not fit the state (unknown
        cluster, other tensor names or shapes, non-finite values, a site twice).
        """

    def check_update(self, state: FederationState, update: SiteUpdate) -> None:
        """Refuse (``strategy_utils.UpdateMismatch``) an update ``aggregate`` could not take.

        The cloud calls this before it accepts an update, and ``aggregate``
        calls it again, so there is one check, wherever an update comes from.
        """
        check_update(state, update)

    def cluster_of(self, state: FederationState, site: str) -> str:
        """The cluster whose global model ``site`` trains from next."""
        cluster = state.membership.get(site)
        if cluster in state.models:
            return cluster
        return default_cluster(state)


def default_cluster(state: FederationState) -> str:
    """Where a site without a (live) membership goes: ``global``, else the most populated cluster."""
    if DEFAULT_CLUSTER in state.models:
        return DEFAULT_CLUSTER
    if not state.models:
        raise ValueError("federation state has no models")
    counts = {cluster: 0 for cluster in state.models}
    for cluster in state.membership.values():
        if cluster in counts:
            counts[cluster] += 1
    return min(counts, key=lambda c: (-counts[c], c))


# ------------------------------------------------------------ the check every update passes
class UpdateMismatch(ValueError):
    """An update that does not fit the federation state.

    ``reason`` is the stable code the cloud counts it under (``wrong_cluster``,
    ``bad_samples``, ``shape_mismatch``, ``bad_dtype``, ``non_finite``,
    ``already_submitted``): the cloud refuses an update with the very check
    the strategy would apply when aggregating it.
    """

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def check_delta(model: Weights, delta: Weights, site: str = "?") -> None:
    """``delta`` has exactly ``model``'s tensor names and shapes, and finite values."""
    if set(delta) != set(model):
        missing = sorted(set(model) - set(delta))
        extra = sorted(set(delta) - set(model))
        raise UpdateMismatch(
            "shape_mismatch",
            f"update from {site}: tensors differ (missing {missing}, unexpected {extra})",
        )
    for name, value in delta.items():
        value = np.asarray(value)
        if value.shape != np.shape(model[name]):
            raise UpdateMismatch(
                "shape_mismatch",
                f"update from {site}: {name} has shape {value.shape}, model has {np.shape(model[name])}",
            )
        if not np.issubdtype(value.dtype, np.floating):
            raise UpdateMismatch(
                "bad_dtype", f"update from {site}: {name} has dtype {value.dtype}, expected float"
            )
        if not np.isfinite(value).all():
            raise UpdateMismatch("non_finite", f"update from {site}: {name} has non-finite values")


def check_update(state: FederationState, update: SiteUpdate) -> None:
    """``update`` fits ``state``: a known cluster, a positive weight, a delta like its model."""
    if update.cluster not in state.models:
        raise UpdateMismatch(
            "wrong_cluster", f"update from {update.site} names unknown cluster {update.cluster!r}"
        )
    if not update.n_samples > 0:
        raise UpdateMismatch(
            "bad_samples", f"update from {update.site} has n_samples={update.n_samples}"
        )
    check_delta(state.models[update.cluster], update.delta, update.site)
