"""Differential privacy on a site's delta: clip its L2 norm, add Gaussian noise, account in zCDP.

The mechanism (DP-FedAvg style, McMahan et al. 2018, at the *site* level):
the whole delta is clipped to L2 norm ``C`` and noise ``N(0, (z C)^2 I)`` is
added. Neighbouring inputs are the site's data with and without one whole
contribution (the delta replaced by zero), so the L2 sensitivity is ``C`` and
one release is a Gaussian mechanism with ``rho = C^2 / (2 (z C)^2) = 1 / (2 z^2)``
zero-concentrated DP (Bun & Steinke 2016, Prop. 1.6). zCDP composes by
addition over rounds, and ``rho``-zCDP implies ``(rho + 2 sqrt(rho ln(1/delta)),
delta)``-DP (Prop. 1.3): that is the epsilon reported, per round and in
total. No amplification by subsampling is claimed (a site takes part in every
round it can). The guarantee covers the delta only; see the README for what
else an update carries.

Noise comes from the operating system's entropy, never from the training seed.
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass

import numpy as np

from ftlct.export.tensors import Weights


def rho_per_release(noise_multiplier: float) -> float:
    """zCDP cost of one Gaussian release with noise std ``noise_multiplier * sensitivity``."""
    if noise_multiplier <= 0:
        raise ValueError("noise_multiplier must be > 0")
    return 1.0 / (2.0 * noise_multiplier**2)


def epsilon_of(rho: float, delta: float) -> float:
    """The epsilon of ``(epsilon, delta)``-DP implied by ``rho``-zCDP."""
    if rho <= 0:
        return 0.0
    return rho + 2.0 * math.sqrt(rho * math.log(1.0 / delta))


def l2_norm(tensors: Weights) -> float:
    return float(
        math.sqrt(sum(float(np.sum(np.square(v, dtype=np.float64))) for v in tensors.values()))
    )


def clip_l2(tensors: Weights, bound: float) -> tuple[Weights, float]:
    """Scale ``tensors`` so their joint L2 norm is at most ``bound``; returns (tensors, norm before)."""
    norm = l2_norm(tensors)
    scale = min(1.0, bound / norm) if norm > 0 else 1.0
    return {
        k: (np.asarray(v, np.float32) * scale).astype(np.float32) for k, v in tensors.items()
    }, norm


def add_gaussian_noise(
    tensors: Weights, std: float, rng: np.random.Generator | None = None
) -> Weights:
    rng = rng or np.random.default_rng(secrets.randbits(128))
    return {
        k: (np.asarray(v, np.float32) + rng.normal(0.0, std, size=np.shape(v))).astype(np.float32)
        for k, v in tensors.items()
    }


@dataclass(frozen=True)
class Budget:
    """What a site has spent and may still spend."""

    rho_spent: float
    delta: float
    epsilon_limit: float  # 0: no limit

    @property
    def epsilon_spent(self) -> float:
        return epsilon_of(self.rho_spent, self.delta)

    def epsilon_after(self, rho: float) -> float:
        return epsilon_of(self.rho_spent + rho, self.delta)

    def allows(self, rho: float) -> bool:
        return self.epsilon_limit <= 0 or self.epsilon_after(rho) <= self.epsilon_limit
