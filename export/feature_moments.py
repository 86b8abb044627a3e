"""Federated feature moments, and a head trained on standardised embeddings.

The multi-layer embedding is far from centred: each dimension is a pooled
activation with its own offset and spread, and a head trained on it by
gradient steps spends its rounds on that offset (the bias and the weights
are coupled through ``W @ mean``). Under label skew every site pulls the
class offsets its own way through that coupling, and the federated head
lands about 0.03 macro-F1 below the pooled solution on covid-ct. Training on
``z = (x - mean) / std`` with the *fleet's* mean and std removes it; a
site's own moments do not (they carry its label mix, and every site would
then precondition differently).

A site sends, once, the per-dimension sums ``sum x``, ``sum x^2`` and its
slice count (``site_moments``; each embedding clipped to a norm bound, as the
closed-form statistics are). Sums add, so the cloud's total gives the fleet's
mean and std exactly (``FeatureMoments.mean_std``; the wire's fp32 sums of squares leave
the std of a dimension whose spread is small beside its mean good to ~1e-3, plenty for
a preconditioner). With DP on, Gaussian
noise of std ``z * sqrt(C^4 + C^2 + 1)`` goes on every number (one slice
moves ``sum x`` by at most C, ``sum x^2`` by at most ``C^2``, the count by 1),
the sensitivity of the closed-form statistics.

The head itself stays a head on the raw embedding: a site maps the global
head into standardised coordinates (``standardised_head``), trains there,
and maps the result back (``raw_head``) before the delta is taken. Both maps
are linear and the same at every site, so FedAvg of the raw deltas is FedAvg
in standardised coordinates, and ``head.onnx``, the wire and inference do not
change. numpy only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ftlct.export.tensors import Weights
from ftlct.protocol.messages import MOMENTS_TENSORS

SUM, SUM_SQ, COUNT = MOMENTS_TENSORS
# no dimension is scaled by more than 1 / MIN_STD_FRACTION of the median spread: a constant
# dimension (a dead channel) must not blow up
MIN_STD_FRACTION = 1e-3


class MomentsError(ValueError):
    """Moments that do not fit each other or the head, or hold non-finite values."""


@dataclass(frozen=True)
class FeatureMoments:
    total: np.ndarray  # [D] float64, sum of x
    total_sq: np.ndarray  # [D] float64, sum of x^2
    count: float  # slices summed (float: DP noise makes it non-integer)

    @property
    def dim(self) -> int:
        return int(self.total.shape[0])

    def __add__(self, other: FeatureMoments) -> FeatureMoments:
        if other.dim != self.dim:
            raise MomentsError(f"cannot add {other.dim}-d moments to {self.dim}-d moments")
        return FeatureMoments(
            self.total + other.total, self.total_sq + other.total_sq, self.count + other.count
        )

    def scaled(self, factor: float) -> FeatureMoments:
        return FeatureMoments(self.total * factor, self.total_sq * factor, self.count * factor)

    def mean_std(self) -> tuple[np.ndarray, np.ndarray]:
        """The mean and std per dimension (float32); std floored at a fraction of the median."""
        if not self.count >= 1.0:
            raise MomentsError(f"moments of {self.count:.3g} slices: no mean")
        mean = self.total / self.count
        var = np.maximum(self.total_sq / self.count - mean**2, 0.0)
        std = np.sqrt(var)
        floor = max(float(np.median(std)) * MIN_STD_FRACTION, 1e-12)
        return mean.astype(np.float32), np.maximum(std, floor).astype(np.float32)

    # ------------------------------------------------------------------ wire form
    def to_arrays(self) -> dict[str, np.ndarray]:
        return {
            SUM: self.total.astype(np.float32),
            SUM_SQ: self.total_sq.astype(np.float32),
            COUNT: np.array([self.count], dtype=np.float32),
        }

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> FeatureMoments:
        """The inverse of ``to_arrays``, checking names, shapes and finiteness."""
        if set(arrays) != set(MOMENTS_TENSORS):
            raise MomentsError(
                f"moments need tensors {', '.join(MOMENTS_TENSORS)}, got {sorted(arrays)}"
            )
        total = np.asarray(arrays[SUM], np.float64)
        total_sq = np.asarray(arrays[SUM_SQ], np.float64)
        count = np.asarray(arrays[COUNT], np.float64)
        if total.ndim != 1 or total.shape != total_sq.shape or count.shape != (1,):
            raise MomentsError(
                f"moments of shapes {total.shape}, {total_sq.shape}, {count.shape} do not fit"
            )
        for name, value in ((SUM, total), (SUM_SQ, total_sq), (COUNT, count)):
            if not np.isfinite(value).all():
                raise MomentsError(f"{name} has non-finite values")
        return cls(total, total_sq, float(count[0]))


def site_moments(embeddings: np.ndarray, clip_norm: float | None = None) -> FeatureMoments:
    """Sums over one site's embeddings ``[N, D]`` (each clipped to ``clip_norm`` if given)."""
    x = np.asarray(embeddings, np.float64)
    if x.ndim != 2:
        raise MomentsError(f"embeddings must be [N, D], got {x.shape}")
    if clip_norm is not None:
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        x = x * np.minimum(1.0, clip_norm / np.maximum(norms, 1e-12))
    return FeatureMoments(x.sum(axis=0), np.square(x).sum(axis=0), float(len(x)))


def privatise_moments(
    moments: FeatureMoments,
    clip_norm: float,
    noise_multiplier: float,
    rng: np.random.Generator,
) -> FeatureMoments:
    """Gaussian noise of std ``noise_multiplier * sqrt(C^4 + C^2 + 1)`` on every number.

    The moments must come from ``site_moments(..., clip_norm=clip_norm)``.
    """
    from ftlct.export.closed_form_head import sensitivity

    if clip_norm <= 0 or noise_multiplier <= 0:
        raise ValueError("clip_norm and noise_multiplier must be > 0")
    std = noise_multiplier * sensitivity(clip_norm)
    return FeatureMoments(
        moments.total + rng.normal(0.0, std, moments.dim),
        moments.total_sq + rng.normal(0.0, std, moments.dim),
        moments.count + float(rng.normal(0.0, std)),
    )


def check_standardisation(mean: np.ndarray, std: np.ndarray, dim: int) -> None:
    """``MomentsError`` unless ``mean`` and ``std`` are finite ``[dim]`` vectors, ``std > 0``."""
    mean, std = np.asarray(mean), np.asarray(std)
    if mean.shape != (dim,) or std.shape != (dim,):
        raise MomentsError(
            f"standardisation of shapes {mean.shape} / {std.shape} for a head taking {dim}"
        )
    if not (np.isfinite(mean).all() and np.isfinite(std).all() and (std > 0).all()):
        raise MomentsError("standardisation needs finite means and positive finite stds")


def _first_layer(weights: Weights) -> tuple[np.ndarray, np.ndarray]:
    if "dense.0.weight" not in weights or "dense.0.bias" not in weights:
        raise MomentsError("a head's first layer (dense.0.weight / dense.0.bias) is missing")
    return (
        np.asarray(weights["dense.0.weight"], np.float64),
        np.asarray(weights["dense.0.bias"], np.float64),
    )


def standardised_head(weights: Weights, mean: np.ndarray, std: np.ndarray) -> Weights:
    """The same function of ``x`` as a head on ``(x - mean) / std``: ``W std``, ``b + W mean``.

    Only the first layer changes (the rest of an MLP sees the same activations).
    """
    w, b = _first_layer(weights)
    check_standardisation(mean, std, w.shape[1])
    out = {k: np.asarray(v, np.float32) for k, v in weights.items()}
    out["dense.0.weight"] = (w * np.asarray(std, np.float64)).astype(np.float32)
    out["dense.0.bias"] = (b + w @ np.asarray(mean, np.float64)).astype(np.float32)
    return out


def raw_head(weights: Weights, mean: np.ndarray, std: np.ndarray) -> Weights:
    """The inverse of ``standardised_head``: a head on ``(x - mean) / std`` as a head on ``x``."""
    w, b = _first_layer(weights)
    check_standardisation(mean, std, w.shape[1])
    raw = w / np.asarray(std, np.float64)
    out = {k: np.asarray(v, np.float32) for k, v in weights.items()}
    out["dense.0.weight"] = raw.astype(np.float32)
    out["dense.0.bias"] = (b - raw @ np.asarray(mean, np.float64)).astype(np.float32)
    return out


def standardise(embeddings: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """``(x - mean) / std`` as float32."""
    x = np.asarray(embeddings, np.float32)
    return (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
