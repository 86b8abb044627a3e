"""Classification metrics in numpy only (no torch, no sklearn): the agent's gate, the cloud's
model selection and the bench score with them.

Macro averages follow the usual convention (scikit-learn's ``average="macro"``
with ``zero_division=0``): the unweighted mean over the classes that occur in
``y_true`` or ``y_pred``; a class never predicted has precision 0, a class
that never occurs has recall 0. A class absent from both is left out, so a
local validation split with one class is not penalised for the other.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def _labels(values, n_classes: int, what: str) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{what} must be one-dimensional, got shape {array.shape}")
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{what} must hold integer class indices, got {array.dtype}")
    array = array.astype(np.int64)
    if array.size and (array.min() < 0 or array.max() >= n_classes):
        raise ValueError(f"{what} holds a class index outside 0..{n_classes - 1}")
    return array


def confusion_matrix(y_true, y_pred, n_classes: int) -> np.ndarray:
    """``[C, C]`` counts: row = true class, column = predicted class."""
    if n_classes < 1:
        raise ValueError(f"n_classes must be >= 1, got {n_classes}")
    true = _labels(y_true, n_classes, "y_true")
    pred = _labels(y_pred, n_classes, "y_pred")
    if true.shape != pred.shape:
        raise ValueError(f"y_true has {true.size} labels, y_pred {pred.size}")
    return np.bincount(true * n_classes + pred, minlength=n_classes * n_classes).reshape(
        n_classes, n_classes
    )


def accuracy(y_true, y_pred) -> float:
    true, pred = np.asarray(y_true), np.asarray(y_pred)
    if true.shape != pred.shape:
        raise ValueError(f"y_true has {true.size} labels, y_pred {pred.size}")
    return float(np.mean(true == pred)) if true.size else 0.0


@dataclass(frozen=True)
class ClassificationMetrics:
    accuracy: float
    precision: float  # macro
    recall: float  # macro
    f1: float  # macro
    confusion_matrix: np.ndarray  # [C, C], rows true, columns predicted
    per_class_f1: tuple[float, ...]

    @property
    def n(self) -> int:
        return int(self.confusion_matrix.sum())

    def to_json(self) -> dict:
        return {
            "accuracy": self.accuracy,
            "precision": self.precision,
            "recall": self.recall,
            "f1": self.f1,
            "confusion_matrix": self.confusion_matrix.astype(int).tolist(),
        }


def from_confusion(matrix: np.ndarray) -> ClassificationMetrics:
    """Accuracy and macro precision/recall/F1 of a confusion matrix (rows true, columns predicted)."""
    cm = np.asarray(matrix, dtype=np.int64)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"a confusion matrix is square, got shape {cm.shape}")
    total = int(cm.sum())
    tp = np.diag(cm).astype(np.float64)
    support = cm.sum(axis=1).astype(np.float64)
    predicted = cm.sum(axis=0).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, tp / predicted, 0.0)
        recall = np.where(support > 0, tp / support, 0.0)
        denominator = precision + recall
        f1 = np.where(denominator > 0, 2 * precision * recall / denominator, 0.0)
    present = (support > 0) | (predicted > 0)
    if not present.any():
        return ClassificationMetrics(0.0, 0.0, 0.0, 0.0, cm, tuple(float(v) for v in f1))
    return ClassificationMetrics(
        accuracy=float(tp.sum() / total),
        precision=float(precision[present].mean()),
        recall=float(recall[present].mean()),
        f1=float(f1[present].mean()),
        confusion_matrix=cm,
        per_class_f1=tuple(float(v) for v in f1),
    )


def classification_metrics(y_true, y_pred, n_classes: int) -> ClassificationMetrics:
    """Accuracy, macro precision/recall/F1 and the confusion matrix of one prediction run."""
    return from_confusion(confusion_matrix(y_true, y_pred, n_classes))


def macro_f1(y_true, y_pred, n_classes: int) -> float:
    return classification_metrics(y_true, y_pred, n_classes).f1
