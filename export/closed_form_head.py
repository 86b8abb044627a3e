"""A head solved in closed form from sufficient statistics (Fed3R, Fanì et al. ICML 2024).

A site sends, instead of a trained delta, sums over its labelled embeddings:
per-class sums and counts and the Gram matrix ``sum x x^T``. Sums add, so the
cloud's total is exactly what one site holding all the data would have
computed, and the head it solves is the centralised solution after a single
round, however the labels are spread over sites (label skew cannot make
sites drift apart: there is no local optimisation to drift).

Two solvers over the same statistics:

- ``discriminant``: linear discriminant analysis with a shared within-class
  covariance shrunk towards its diagonal (scale-free shrinkage), and equal
  class priors (the head is scored by macro-F1, so no class is favoured for
  being common). Logit ``c`` is ``w_c . x + b_c`` with ``w_c = S^-1 mu_c``,
  ``b_c = -mu_c . S^-1 mu_c / 2``.
- ``ridge``: Fed3R's ridge regression to one-hot targets, on features
  standardised by the pooled diagonal, with an unpenalised bias.

Both return the usual ``dense.0.weight [C, D]`` / ``dense.0.bias [C]`` linear
head, so nothing downstream changes. Embeddings wider than the wire allows
can be projected first by a seeded random matrix (``random_projection``): the
head solved on projected features maps back to the original space.

With ``clip_norm`` and ``noise_multiplier`` (``privatise``) each embedding is
clipped to L2 norm C and Gaussian noise is added to every released sum: one
slice changes the released vector by at most ``sqrt(C^4 + C^2 + 1)`` (its
outer product, its class sum, its count), so one release is
``1 / (2 z^2)``-zCDP at the level of one labelled slice. numpy only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ftlct.protocol.messages import STATISTICS_TENSORS

SOLVERS = ("discriminant", "ridge")
# the wire names (a statistics update holds exactly these): the Gram matrix's upper triangle
# (diagonal included, row by row), per-class sums, per-class counts
GRAM, CLASS_SUMS, CLASS_COUNTS = STATISTICS_TENSORS
STAT_TENSORS = STATISTICS_TENSORS


class StatisticsError(ValueError):
    """Statistics that do not fit each other (dimensions, classes) or hold non-finite values."""


@dataclass(frozen=True)
class HeadStatistics:
    gram: np.ndarray  # [D, D] float64, sum of x x^T
    class_sums: np.ndarray  # [C, D] float64
    class_counts: np.ndarray  # [C] float64 (float: DP noise makes them non-integer)

    @property
    def dim(self) -> int:
        return int(self.gram.shape[0])

    @property
    def n_classes(self) -> int:
        return int(self.class_counts.shape[0])

    @property
    def n(self) -> float:
        return float(self.class_counts.sum())

    def __add__(self, other: HeadStatistics) -> HeadStatistics:
        if (other.dim, other.n_classes) != (self.dim, self.n_classes):
            raise StatisticsError(
                f"cannot add statistics of {other.dim}-d, {other.n_classes} classes "
                f"to {self.dim}-d, {self.n_classes} classes"
            )
        return HeadStatistics(
            self.gram + other.gram,
            self.class_sums + other.class_sums,
            self.class_counts + other.class_counts,
        )

    # ------------------------------------------------------------------ wire form
    def to_arrays(self) -> dict[str, np.ndarray]:
        """float32 tensors for an update body; the Gram matrix as its upper triangle."""
        upper = self.gram[np.triu_indices(self.dim)]
        return {
            GRAM: upper.astype(np.float32),
            CLASS_SUMS: self.class_sums.astype(np.float32),
            CLASS_COUNTS: self.class_counts.astype(np.float32),
        }

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> HeadStatistics:
        """The inverse of ``to_arrays``, checking names, shapes and finiteness."""
        if set(arrays) != set(STAT_TENSORS):
            raise StatisticsError(
                f"statistics need tensors {', '.join(STAT_TENSORS)}, got {sorted(arrays)}"
            )
        sums = np.asarray(arrays[CLASS_SUMS], np.float64)
        counts = np.asarray(arrays[CLASS_COUNTS], np.float64)
        upper = np.asarray(arrays[GRAM], np.float64)
        if sums.ndim != 2 or counts.shape != (sums.shape[0],) or sums.shape[0] < 2:
            raise StatisticsError(
                f"class sums {sums.shape} and counts {counts.shape} do not fit (>= 2 classes)"
            )
        dim = sums.shape[1]
        if upper.shape != (dim * (dim + 1) // 2,):
            raise StatisticsError(f"Gram triangle has {upper.shape}, expected {dim}-d")
        for name, value in ((GRAM, upper), (CLASS_SUMS, sums), (CLASS_COUNTS, counts)):
            if not np.isfinite(value).all():
                raise StatisticsError(f"{name} has non-finite values")
        gram = np.zeros((dim, dim))
        gram[np.triu_indices(dim)] = upper
        gram = gram + np.triu(gram, 1).T
        return cls(gram, sums, counts)


def site_statistics(
    embeddings: np.ndarray,
    labels: np.ndarray,
    n_classes: int,
    clip_norm: float | None = None,
) -> HeadStatistics:
    """Sums over one site's labelled embeddings ``[N, D]`` (clipped to ``clip_norm`` if given)."""
    x = np.asarray(embeddings, np.float64)
    y = np.asarray(labels, np.int64)
    if x.ndim != 2 or y.shape != (len(x),):
        raise StatisticsError(f"embeddings {x.shape} and labels {y.shape} do not fit")
    if y.size and (y.min() < 0 or y.max() >= n_classes):
        raise StatisticsError(f"labels outside 0..{n_classes - 1}")
    if clip_norm is not None:
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        x = x * np.minimum(1.0, clip_norm / np.maximum(norms, 1e-12))
    sums = np.zeros((n_classes, x.shape[1]))
    np.add.at(sums, y, x)
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)
    return HeadStatistics(x.T @ x, sums, counts)


def sensitivity(clip_norm: float) -> float:
    """L2 change of the released statistics when one clipped slice is added or removed."""
    return math.sqrt(clip_norm**4 + clip_norm**2 + 1.0)


def privatise(
    stats: HeadStatistics,
    clip_norm: float,
    noise_multiplier: float,
    rng: np.random.Generator,
) -> HeadStatistics:
    """Gaussian noise of std ``noise_multiplier * sensitivity`` on every released number.

    The statistics must come from ``site_statistics(..., clip_norm=clip_norm)``.
    The Gram matrix gets one noise draw per upper-triangle entry, mirrored, as
    the wire carries only the triangle.
    """
    if clip_norm <= 0 or noise_multiplier <= 0:
        raise ValueError("clip_norm and noise_multiplier must be > 0")
    std = noise_multiplier * sensitivity(clip_norm)
    dim = stats.dim
    noise = np.zeros((dim, dim))
    noise[np.triu_indices(dim)] = rng.normal(0.0, std, dim * (dim + 1) // 2)
    noise = noise + np.triu(noise, 1).T
    return HeadStatistics(
        stats.gram + noise,
        stats.class_sums + rng.normal(0.0, std, stats.class_sums.shape),
        stats.class_counts + rng.normal(0.0, std, stats.class_counts.shape),
    )


def rho_of_release(noise_multiplier: float) -> float:
    """zCDP of one release (per labelled slice): a Gaussian mechanism at std z x sensitivity."""
    return 1.0 / (2.0 * noise_multiplier**2)


def random_projection(dim_in: int, dim_out: int, seed: int) -> np.ndarray:
    """A seeded Gaussian ``[dim_out, dim_in]`` matrix (scaled to keep norms), shared by all sites."""
    rng = np.random.default_rng([0x3F3D, seed, dim_in, dim_out])
    return (rng.standard_normal((dim_out, dim_in)) / math.sqrt(dim_out)).astype(np.float32)


def _moments(stats: HeadStatistics) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Class means ``[C, D]``, the overall mean and the pooled within-class covariance."""
    counts = np.maximum(stats.class_counts, 1e-9)
    present = stats.class_counts > 0.5
    if present.sum() < 2:
        raise StatisticsError("statistics cover fewer than two classes: no head can be solved")
    means = stats.class_sums / counts[:, None]
    n = max(stats.n, 1.0)
    mean = stats.class_sums.sum(axis=0) / n
    between = (stats.class_sums[present].T * (1.0 / counts[present])) @ stats.class_sums[present]
    within = (stats.gram - between) / max(n - present.sum(), 1.0)
    return means, mean, (within + within.T) / 2.0


def solve_head(
    stats: HeadStatistics, solver: str = "discriminant", shrinkage: float = 0.5
) -> dict[str, np.ndarray]:
    """The linear head ``dense.0.*`` solved from (summed) statistics."""
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {', '.join(SOLVERS)}, got {solver!r}")
    if not shrinkage > 0 or (solver == "discriminant" and shrinkage > 1.0):
        raise ValueError(f"shrinkage must be > 0 (at most 1 for discriminant), got {shrinkage}")
    means, mean, within = _moments(stats)
    present = stats.class_counts > 0.5
    diag = np.maximum(np.diag(within), 1e-8 * max(float(np.diag(within).max()), 1e-12))
    if solver == "discriminant":
        shrunk = (1.0 - shrinkage) * within + shrinkage * np.diag(diag)
        centred = means - mean  # centring keeps the bias small; the logits differ by a constant
        weight = np.linalg.solve(shrunk, centred.T).T
        bias = -0.5 * np.einsum("cd,cd->c", weight, centred) - weight @ mean
    else:
        scale = 1.0 / np.sqrt(diag)  # standardise by the within-class spread
        n = max(stats.n, 1.0)
        total = stats.gram / n - np.outer(mean, mean)  # covariance of x around its mean
        a = (total * scale[:, None]) * scale[None, :]
        targets = stats.class_sums / n - np.outer(stats.class_counts / n, mean)
        b = (targets * scale[None, :]).T  # [D, C]: covariance of standardised x with one-hot y
        coef = np.linalg.solve(a + shrinkage * np.eye(len(a)), b)  # [D, C]
        weight = (coef * scale[:, None]).T
        bias = stats.class_counts / n - weight @ mean
    # a class no site has ever labelled must never win
    bias = np.where(present, bias, -1e4)
    return {
        "dense.0.weight": weight.astype(np.float32),
        "dense.0.bias": bias.astype(np.float32),
    }


def project_head(head: dict[str, np.ndarray], projection: np.ndarray) -> dict[str, np.ndarray]:
    """A head solved on ``projection @ x`` as a head on ``x`` itself (``W P``)."""
    return {
        "dense.0.weight": (head["dense.0.weight"] @ projection).astype(np.float32),
        "dense.0.bias": head["dense.0.bias"].astype(np.float32),
    }


def statistics_bytes(dim: int, n_classes: int, bytes_per_value: int = 4) -> int:
    """Raw size of one site's statistics on the wire (before the envelope)."""
    return bytes_per_value * (dim * (dim + 1) // 2 + n_classes * dim + n_classes)
