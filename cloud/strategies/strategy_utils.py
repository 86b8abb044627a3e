"""Arithmetic the strategies share: checks, weighted running sums, norms, similarities.

Accumulation is done in float64 and cast back to the model's dtype, so the
order in which updates arrive changes results only at float32 rounding.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence

import numpy as np

from ftlct.cloud.strategies.base import (
    FederationState,
    SiteUpdate,
    UpdateMismatch,
    Weights,
    check_update,
)


def copy_weights(weights: Weights) -> Weights:
    return {name: np.array(value, copy=True) for name, value in weights.items()}


def copy_state(state: FederationState) -> FederationState:
    """A deep copy of ``state`` (models copied, membership and extra re-created)."""
    return FederationState(
        models={cluster: copy_weights(w) for cluster, w in state.models.items()},
        membership=dict(state.membership),
        round=state.round,
        extra=json.loads(json.dumps(state.extra)),
    )


def check_updates(
    state: FederationState,
    updates: Iterable[SiteUpdate],
    check: Callable[[FederationState, SiteUpdate], None] = check_update,
) -> Iterable[SiteUpdate]:
    """Yield updates after ``check`` (a strategy's ``check_update``) and one update per site."""
    seen: set[str] = set()
    for update in updates:
        if update.site in seen:
            raise UpdateMismatch(
                "already_submitted", f"two updates from site {update.site} in one round"
            )
        seen.add(update.site)
        check(state, update)
        yield update


class WeightedSum:
    """A running ``sum(w_i * delta_i)`` and ``sum(w_i)``: memory O(model), not O(sites x model)."""

    def __init__(self) -> None:
        self.total: dict[str, np.ndarray] = {}
        self.weight = 0.0
        self.count = 0

    def add(self, delta: Weights, weight: float) -> None:
        for name, value in delta.items():
            scaled = np.asarray(value, dtype=np.float64) * weight
            if name in self.total:
                self.total[name] += scaled
            else:
                self.total[name] = scaled
        self.weight += weight
        self.count += 1

    def mean(self) -> dict[str, np.ndarray]:
        if self.weight <= 0:
            raise ValueError("weighted mean of nothing")
        return {name: value / self.weight for name, value in self.total.items()}


def apply_delta(model: Weights, delta: dict[str, np.ndarray], scale: float = 1.0) -> Weights:
    """``model + scale * delta`` with each tensor kept in the model's dtype."""
    out = {}
    for name, value in model.items():
        base = np.asarray(value)
        out[name] = (base.astype(np.float64) + scale * np.asarray(delta[name])).astype(base.dtype)
    return out


def flatten(weights: Weights) -> np.ndarray:
    """All tensors, in sorted-name order, as one float64 vector."""
    if not weights:
        return np.zeros(0)
    return np.concatenate(
        [np.asarray(weights[name], dtype=np.float64).ravel() for name in sorted(weights)]
    )


def l2_norm(weights: Weights) -> float:
    return float(
        np.sqrt(sum(float(np.sum(np.square(v, dtype=np.float64))) for v in weights.values()))
    )


def clip_to_norm(delta: Weights, max_norm: float) -> Weights:
    """``delta`` scaled down to L2 norm ``max_norm`` if it is longer; unchanged otherwise."""
    norm = l2_norm(delta)
    if norm <= max_norm or norm == 0.0:
        return delta
    factor = max_norm / norm
    return {
        name: (np.asarray(v, dtype=np.float64) * factor).astype(np.asarray(v).dtype)
        for name, v in delta.items()
    }


def cosine_similarity_matrix(vectors: Sequence[np.ndarray]) -> np.ndarray:
    """Pairwise cosine similarities; a zero vector is similar to nothing (0)."""
    matrix = np.stack([np.asarray(v, dtype=np.float64) for v in vectors])
    norms = np.linalg.norm(matrix, axis=1)
    safe = np.where(norms > 0, norms, 1.0)
    unit = matrix / safe[:, None]
    similarity = unit @ unit.T
    similarity[norms == 0, :] = 0.0
    similarity[:, norms == 0] = 0.0
    return np.clip(similarity, -1.0, 1.0)


def stack_deltas(deltas: Sequence[Weights]) -> dict[str, np.ndarray]:
    """name -> array [n_sites, *shape] (robust aggregators need every value per coordinate)."""
    return {
        name: np.stack([np.asarray(d[name], dtype=np.float64) for d in deltas])
        for name in deltas[0]
    }


def group_by_cluster(updates: Iterable[SiteUpdate]) -> dict[str, list[SiteUpdate]]:
    groups: dict[str, list[SiteUpdate]] = {}
    for update in updates:
        groups.setdefault(update.cluster, []).append(update)
    return groups


def next_state(
    state: FederationState, models: dict[str, Weights], participants: dict[str, str]
) -> FederationState:
    """``state`` one round on: given models, participants' membership recorded."""
    membership = dict(state.membership)
    membership.update(participants)
    return FederationState(
        models=models,
        membership=membership,
        round=state.round + 1,
        extra=json.loads(json.dumps(state.extra)),
    )


def coordinatewise_means(
    state: FederationState, updates: Sequence[SiteUpdate], reduce, check=check_update
) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, str]]:
    """Per cluster: stack the deltas and ``reduce(stacked [n, ...]) -> [...]`` each tensor.

    Returns ``(cluster -> combined delta, site -> cluster)``. Needs every delta
    of a cluster in memory at once (O(sites x model)): a median or a trimmed
    mean cannot be computed from a running sum.
    """
    groups = group_by_cluster(check_updates(state, updates, check))
    means = {}
    for cluster, members in groups.items():
        stacked = stack_deltas([u.delta for u in members])
        means[cluster] = {name: reduce(values) for name, values in stacked.items()}
    participants = {u.site: u.cluster for members in groups.values() for u in members}
    return means, participants


def dp_count_slack(count):
    """How far DP noise may move a count (three standard deviations of a unit-noise count);
    elementwise for an array of counts."""
    return 3.0 * np.sqrt(np.maximum(1.0, count))


def open_sums(state: FederationState, update: SiteUpdate, parse: Callable, error: type):
    """``parse(update.delta)`` for an update of summed tensors (closed-form statistics, feature
    moments) to a cluster the federation has; ``parse`` raising ``error`` is ``non_finite`` or
    ``shape_mismatch``."""
    if update.cluster not in state.models:
        raise UpdateMismatch(
            "wrong_cluster",
            f"update from {update.site} names unknown cluster {update.cluster!r}",
        )
    try:
        return parse(update.delta)
    except error as exc:
        reason = "non_finite" if "non-finite" in str(exc) else "shape_mismatch"
        raise UpdateMismatch(reason, f"update from {update.site}: {exc}") from exc
