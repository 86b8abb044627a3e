"""Numpy metrics: the figures the bench reports and the agent gates models on."""

from __future__ import annotations

import numpy as np
import pytest

from ftlct.export.metrics import (
    accuracy,
    classification_metrics,
    confusion_matrix,
    from_confusion,
    macro_f1,
)


def test_confusion_matrix_rows_are_true_columns_predicted():
    cm = confusion_matrix([0, 0, 1, 2, 2, 2], [0, 1, 1, 2, 0, 2], 3)
    assert cm.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]


def test_macro_scores_match_hand_computation():
    # class 0: tp 1, predicted 2, support 2 -> p .5 r .5 f1 .5
    # class 1: tp 1, predicted 2, support 1 -> p .5 r 1  f1 2/3
    # class 2: tp 2, predicted 2, support 3 -> p 1  r 2/3 f1 .8
    m = classification_metrics([0, 0, 1, 2, 2, 2], [0, 1, 1, 2, 0, 2], 3)
    assert m.accuracy == pytest.approx(4 / 6)
    assert m.precision == pytest.approx((0.5 + 0.5 + 1.0) / 3)
    assert m.recall == pytest.approx((0.5 + 1.0 + 2 / 3) / 3)
    assert m.f1 == pytest.approx((0.5 + 2 / 3 + 0.8) / 3)
    assert m.n == 6
    assert m.to_json()["confusion_matrix"] == m.confusion_matrix.tolist()


def test_class_never_predicted_counts_as_zero_precision():
    m = classification_metrics([0, 1, 1, 1], [1, 1, 1, 1], 2)
    assert m.precision == pytest.approx((0.0 + 0.75) / 2)
    assert m.f1 == pytest.approx((0.0 + 2 * 0.75 / 1.75) / 2)


def test_class_absent_from_truth_and_prediction_is_left_out():
    assert macro_f1([1, 1, 1], [1, 1, 1], 2) == 1.0
    assert from_confusion(np.zeros((2, 2), int)).f1 == 0.0


def test_accuracy_of_empty_is_zero_and_shapes_must_agree():
    assert accuracy([], []) == 0.0
    with pytest.raises(ValueError, match="labels"):
        accuracy([0, 1], [0])


@pytest.mark.parametrize(
    ("y_true", "y_pred", "match"),
    [
        ([0, 3], [0, 1], "outside"),
        ([0, -1], [0, 1], "outside"),
        ([0.5, 1.0], [0, 1], "integer"),
        ([[0, 1]], [[0, 1]], "one-dimensional"),
        ([0, 1, 1], [0, 1], "labels"),
    ],
)
def test_bad_labels_are_refused(y_true, y_pred, match):
    with pytest.raises(ValueError, match=match):
        confusion_matrix(y_true, y_pred, 2)


def test_non_square_confusion_matrix_is_refused():
    with pytest.raises(ValueError, match="square"):
        from_confusion(np.zeros((2, 3)))
