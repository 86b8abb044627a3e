"""Server optimizers: how a cluster's model moves along the round's aggregated delta.

Reddi et al. (2021, "Adaptive Federated Optimization", ICLR) treat the
aggregated delta ``d_t`` (mean of ``local - global``) as a pseudo-gradient
with the sign flipped and hand it to a server-side optimizer:

- ``sgd`` (default): ``x += lr * v`` with ``v = momentum * v + d_t``. With
  ``momentum = 0`` and ``lr = 1`` this is plain FedAvg (McMahan et al. 2017);
  ``momentum > 0`` is FedAvgM (Hsu, Qi, Brown 2019, arXiv:1909.06335), which
  damps the round-to-round swings that label-skewed sites cause.
- ``adam``: FedAdam, ``m = b1 m + (1 - b1) d``, ``v = b2 v + (1 - b2) d^2``,
  ``x += lr * m / (sqrt(v) + tau)``; no bias correction, as in the paper.

The per-cluster buffers (``v``; ``m`` and ``v``) must survive a cloud restart
between rounds, so they live in ``FederationState.extra["server_optimizer"]``
as base64 of the raw float32 bytes: JSON-serialisable, exact, and 4/3 of the
model's size. The cloud commits ``extra`` in the same transaction as the new
models, so a crash re-runs the round from the old buffers and gets the same
result. A cluster created by a CFL split starts with empty buffers: its
parent's momentum pointed where the two halves disagreed.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

import numpy as np

from ftlct.cloud.strategies.base import FederationState
from ftlct.cloud.strategies.strategy_utils import apply_delta, copy_weights, next_state
from ftlct.export.tensors import Weights

KINDS = ("sgd", "adam")
EXTRA_KEY = "server_optimizer"

Slots = dict[str, dict[str, np.ndarray]]  # slot name ("v", "m") -> tensor name -> float64 array


@dataclass(frozen=True)
class ServerOptimizer:
    kind: str = "sgd"
    lr: float = 1.0
    momentum: float = 0.0  # sgd: heavy-ball beta; adam: beta1
    beta2: float = 0.99  # adam only
    tau: float = 1e-3  # adam only: adaptivity floor in the denominator

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(
                f"server_optimizer must be one of {', '.join(KINDS)}, got {self.kind!r}"
            )
        if not self.lr > 0:
            raise ValueError(f"server_lr must be > 0, got {self.lr}")
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"server_momentum must be in [0, 1), got {self.momentum}")
        if not 0.0 <= self.beta2 < 1.0:
            raise ValueError(f"server_beta2 must be in [0, 1), got {self.beta2}")
        if not self.tau > 0:
            raise ValueError(f"server_tau must be > 0, got {self.tau}")

    @property
    def stateless(self) -> bool:
        """Plain (scaled) FedAvg: nothing to remember between rounds."""
        return self.kind == "sgd" and self.momentum == 0.0

    def step(
        self, model: Weights, delta: dict[str, np.ndarray], slots: Slots
    ) -> tuple[Weights, Slots]:
        """``(new model, new slots)`` after one round; ``slots`` is not modified (empty: first round)."""
        if self.stateless:
            return apply_delta(model, delta, self.lr), {}
        d = {name: np.asarray(delta[name], dtype=np.float64) for name in model}
        if self.kind == "sgd":
            old = slots.get("v", {})
            v = {n: self.momentum * old[n] + d[n] if n in old else d[n] for n in d}
            return apply_delta(model, v, self.lr), {"v": v}
        old_m, old_v = slots.get("m", {}), slots.get("v", {})
        b1, b2 = self.momentum, self.beta2
        m = {n: b1 * old_m.get(n, 0.0) + (1 - b1) * d[n] for n in d}
        v = {n: b2 * old_v.get(n, 0.0) + (1 - b2) * np.square(d[n]) for n in d}
        step = {n: m[n] / (np.sqrt(v[n]) + self.tau) for n in d}
        return apply_delta(model, step, self.lr), {"m": m, "v": v}

    def advance(
        self, state: FederationState, means: dict[str, dict], participants: dict[str, str]
    ) -> FederationState:
        """``state`` one round on: each cluster in ``means`` stepped along its mean delta."""
        models = {cluster: copy_weights(w) for cluster, w in state.models.items()}
        slots = {}
        for cluster, mean in means.items():
            models[cluster], slots[cluster] = self.step(
                state.models[cluster], mean, load_slots(state.extra, cluster)
            )
        new = next_state(state, models, participants)
        store_slots(new.extra, slots, set(models))
        return new


def server_optimizer(
    server_optimizer: str = "sgd",
    server_lr: float = 1.0,
    server_momentum: float | None = None,
    server_beta2: float = 0.99,
    server_tau: float = 1e-3,
) -> ServerOptimizer:
    """The strategies' keyword parameters -> a ``ServerOptimizer`` (momentum: sgd 0, adam 0.9)."""
    if server_momentum is None:
        server_momentum = 0.9 if server_optimizer == "adam" else 0.0
    return ServerOptimizer(server_optimizer, server_lr, server_momentum, server_beta2, server_tau)


# --------------------------------------------------------------------------- persistence


def load_slots(extra: dict, cluster: str) -> Slots:
    """The cluster's buffers from ``FederationState.extra`` (empty if it has none yet)."""
    stored = extra.get(EXTRA_KEY, {}).get(cluster, {})
    return {
        slot: {name: _decode(v) for name, v in tensors.items()} for slot, tensors in stored.items()
    }


def store_slots(extra: dict, clusters: dict[str, Slots], live: set[str]) -> None:
    """Write each cluster's new buffers into ``extra`` (in place); forget clusters not in ``live``."""
    table = {c: s for c, s in extra.get(EXTRA_KEY, {}).items() if c in live}
    for cluster, slots in clusters.items():
        if slots:
            table[cluster] = {
                slot: {name: _encode(v) for name, v in tensors.items()}
                for slot, tensors in slots.items()
            }
        else:
            table.pop(cluster, None)
    if table:
        extra[EXTRA_KEY] = table
    else:
        extra.pop(EXTRA_KEY, None)


def _encode(value: np.ndarray) -> dict:
    array = np.ascontiguousarray(value, dtype="<f4")
    return {"shape": list(array.shape), "f32": base64.b64encode(array.tobytes()).decode("ascii")}


def _decode(value: dict) -> np.ndarray:
    raw = base64.b64decode(value["f32"])
    return np.frombuffer(raw, dtype="<f4").astype(np.float64).reshape(value["shape"])
