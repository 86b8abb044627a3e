"""A site's validation report, carried in its update's metrics: how the round's base global head
did on the site's held-out slices, as a confusion matrix.

Entry ``vcm_{i}_{j}`` counts held-out slices of class ``i`` the base head predicted as ``j``:
small non-negative integers, no image, no embedding, no identifier. The cloud sums the
reports of one version over its sites and scores the sum (``cloud/model_selection.py``), so
it can keep and announce the best global version, not only the last. The update's metric
limit (``messages.MAX_METRICS``) leaves room for label sets of up to ``MAX_REPORT_CLASSES``
classes; larger ones send no report. A report that does not fit the label set is ignored by
the cloud, never counted half.
"""

from __future__ import annotations

import re

import numpy as np

PREFIX = "vcm_"
MAX_REPORT_CLASSES = 4  # 16 entries beside the ~14 training metrics, under MAX_METRICS (32)
MAX_COUNT = 10_000_000  # per entry: held-out slices of one site
_ENTRY = re.compile(r"^vcm_(\d{1,2})_(\d{1,2})$")


class ReportError(ValueError):
    """Report entries that do not make a confusion matrix of this label set."""


def report_metrics(confusion: np.ndarray) -> dict[str, float]:
    """The metric entries of ``confusion`` ``[C, C]`` (rows true, columns predicted); none when
    the label set is too large for the metric limit."""
    matrix = np.asarray(confusion)
    n = matrix.shape[0] if matrix.ndim == 2 else 0
    if matrix.ndim != 2 or matrix.shape != (n, n) or n < 2:
        raise ValueError(f"a confusion matrix is square with >= 2 classes, got {matrix.shape}")
    if n > MAX_REPORT_CLASSES:
        return {}
    return {f"{PREFIX}{i}_{j}": float(matrix[i, j]) for i in range(n) for j in range(n)}


def has_report(metrics: dict[str, float]) -> bool:
    return any(key.startswith(PREFIX) for key in metrics)


def read_report(metrics: dict[str, float], n_classes: int) -> np.ndarray | None:
    """The confusion matrix in ``metrics`` (None if they carry no report); ``ReportError`` if
    the entries are not exactly a ``[n_classes, n_classes]`` matrix of small counts."""
    entries = {k: v for k, v in metrics.items() if k.startswith(PREFIX)}
    if not entries:
        return None
    matrix = np.zeros((n_classes, n_classes), dtype=np.int64)
    for key, value in entries.items():
        match = _ENTRY.match(key)
        if match is None:
            raise ReportError(f"report entry {key!r} is not vcm_{{true}}_{{predicted}}")
        i, j = int(match.group(1)), int(match.group(2))
        if i >= n_classes or j >= n_classes:
            raise ReportError(f"report entry {key} outside {n_classes} classes")
        if not (float(value).is_integer() and 0 <= value <= MAX_COUNT):
            raise ReportError(f"report entry {key} = {value!r} is not a count")
        matrix[i, j] = int(value)
    if len(entries) != n_classes * n_classes:
        raise ReportError(
            f"report has {len(entries)} entries, {n_classes} classes need {n_classes**2}"
        )
    return matrix
