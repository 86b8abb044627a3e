"""Rounds that never make the model worse: keep the best global version by federated validation.

Each round, every site scores the new global model on its own held-out
slices and reports the confusion matrix (a few integers; no image, no
embedding). The federation's validation score of that version is the
macro-F1 of the summed matrices: the score one site holding every site's
held-out slices would have measured. The federation keeps, and would
announce, the version with the best score so far (a later version must beat
it, ties keep the earlier one); the experiment reports that version's test
score beside the last one's. NVFlare's in-time model selection works the
same way.

Pure functions: the cloud (``round_coordinator``) and the bench call them with what
sites report (the confusion matrices in their updates, ``protocol.validation_report``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ftlct.export.metrics import from_confusion


def federated_validation_score(confusions: Sequence[np.ndarray]) -> float:
    """Macro-F1 of the sites' summed validation confusion matrices (rows true, columns predicted)."""
    if not confusions:
        raise ValueError("no site reported a validation confusion matrix")
    shapes = {np.shape(m) for m in confusions}
    if len(shapes) != 1:
        raise ValueError(f"confusion matrices of different shapes: {sorted(shapes)}")
    total = np.sum([np.asarray(m, dtype=np.int64) for m in confusions], axis=0)
    if (total < 0).any():
        raise ValueError("a confusion matrix holds negative counts")
    return from_confusion(total).f1


def weighted_validation_score(scores: Sequence[float], weights: Sequence[float]) -> float:
    """The ``weights``-weighted mean of per-site scores (for sites that report one number)."""
    if not scores or len(scores) != len(weights) or min(weights) < 0 or sum(weights) <= 0:
        raise ValueError("need as many non-negative weights as scores, not all zero")
    return float(np.dot(scores, weights) / np.sum(weights))


@dataclass(frozen=True)
class Candidate:
    version: str
    round: int
    score: float


@dataclass(frozen=True)
class BestVersion:
    """The best version so far; ``offer`` returns the successor state (immutable, JSON-friendly)."""

    best: Candidate | None = None

    def offer(self, candidate: Candidate) -> BestVersion:
        """Keep ``candidate`` only if it scores strictly better than the best so far."""
        if not np.isfinite(candidate.score):
            raise ValueError(f"{candidate.version}: validation score is not finite")
        if self.best is None or candidate.score > self.best.score:
            return BestVersion(candidate)
        return self
