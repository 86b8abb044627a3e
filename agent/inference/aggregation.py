"""From per-slice probabilities to one series result.

Rule ``top_k_mean`` (the default): rank the slices by how strongly they are
*not* the negative label (``1 - p(negative)``, the negative label being
``normal`` unless configured), keep the ``k = min(top_k, N)`` highest, and
average their whole probability vectors. The series label is the arg-max of
that average.

Why: the findings a CT head model looks for (a bleed, a fracture, a nodule)
are "abnormal anywhere": they show on a handful of a few hundred slices. The
mean over all slices would drown a five-slice bleed in 230 normal slices; the
single most suspicious slice (max) flips on one noisy slice. The mean of the
k most suspicious slices is the usual compromise of multiple-instance
learning: a series is normal only if even its k most suspicious slices look
normal. A series of fewer than k slices (a single X-ray-like SC image, a PNG)
averages all of them, which is the plain slice result for one slice.

Rule ``mean``, also the fallback when none of the labels is the negative one
(a label set such as ``covid,noncovid`` where "anywhere" has no meaning
without a declared negative): the mean of all slice probabilities.

The averaged vector still sums to 1, so ``probabilities`` is a distribution
over the labels in both rules.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SeriesScore:
    probabilities: dict[str, float]
    label: str
    key_slices: list[int]  # indices into the slice array: the slices that decided the result
    rule: str


def aggregate(
    slice_probabilities: np.ndarray,
    labels: list[str],
    rule: str = "top_k_mean",
    top_k: int = 5,
    negative_label: str = "normal",
) -> SeriesScore:
    """Aggregate ``[N, C]`` slice probabilities (rows sum to 1) into one ``SeriesScore``."""
    probs = np.asarray(slice_probabilities, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[0] == 0 or probs.shape[1] != len(labels):
        raise ValueError(f"need [N>0, {len(labels)}] probabilities, got {probs.shape}")
    if rule == "top_k_mean" and negative_label in labels:
        suspicion = 1.0 - probs[:, labels.index(negative_label)]
        k = min(top_k, len(probs))
        # stable sort: equal suspicion keeps slice order, so results are reproducible
        chosen = np.argsort(-suspicion, kind="stable")[:k]
        used = f"top_k_mean(k={k}, negative={negative_label})"
    else:
        chosen = np.arange(len(probs))
        used = "mean"
    mean = probs[chosen].mean(axis=0)
    winner = int(np.argmax(mean))
    if used == "mean":  # key slices: those most confident of the winning label
        chosen = np.argsort(-probs[:, winner], kind="stable")[: min(top_k, len(probs))]
    return SeriesScore(
        probabilities={label: float(p) for label, p in zip(labels, mean, strict=True)},
        label=labels[winner],
        key_slices=[int(i) for i in chosen],
        rule=used,
    )
