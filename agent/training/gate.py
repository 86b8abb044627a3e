"""The gate on a new global head: does it keep the local macro-F1 on the held-out series?

numpy only (``serve`` judges heads without torch). Refused when the candidate's
macro-F1 on the local held-out slices is lower than the current head's by more
than ``max_drop``; with fewer than ``min_samples`` held-out slices there is
nothing to judge on and the head is accepted (and the reason says so).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ftlct.export.head_onnx import numpy_head_logits
from ftlct.export.metrics import macro_f1
from ftlct.export.tensors import Weights


@dataclass(frozen=True)
class GateResult:
    accepted: bool
    reason: str
    f1_current: float | None = None
    f1_candidate: float | None = None
    n_val: int = 0


def head_f1(weights: Weights, vectors: np.ndarray, labels: np.ndarray, n_classes: int) -> float:
    predicted = numpy_head_logits(weights, vectors).argmax(axis=1)
    return macro_f1(labels, predicted, n_classes)


def judge_head(
    current: Weights,
    candidate: Weights,
    vectors: np.ndarray,
    labels: np.ndarray,
    n_classes: int,
    max_drop: float,
    min_samples: int,
) -> GateResult:
    n = len(labels)
    if n < min_samples:
        return GateResult(
            True, f"not gated: {n} held-out slices, the gate needs {min_samples}", n_val=n
        )
    before = head_f1(current, vectors, labels, n_classes)
    after = head_f1(candidate, vectors, labels, n_classes)
    if before - after > max_drop:
        return GateResult(
            False,
            f"local macro-F1 would drop from {before:.3f} to {after:.3f} "
            f"(more than {max_drop:.3f}) on {n} held-out slices",
            before,
            after,
            n,
        )
    return GateResult(
        True, f"local macro-F1 {before:.3f} -> {after:.3f} on {n} slices", before, after, n
    )
