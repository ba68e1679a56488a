"""Metrics on hand-made inputs whose answers are worked out in the comments."""

from __future__ import annotations

import math

import pytest

from errwise import metrics


def pred(task: int, correct: bool, gold: str = "a", pred: str = "a") -> dict:
    return {"task": task, "correct": correct, "gold": gold, "pred": pred}


def test_accuracy_row_per_task_and_nan_for_a_task_without_instances():
    preds = [pred(0, True), pred(0, True), pred(0, True), pred(0, False), pred(2, False)]
    row = metrics.accuracy_row(preds, 3)
    assert row[0] == 0.75 and math.isnan(row[1]) and row[2] == 0.0


def test_seen_accuracy_is_micro_over_instances():
    # task 0: 3/4 correct, task 1: 0/1 -> micro 3/5 = 0.6 (the mean of the row would be 0.375)
    preds = [pred(0, True), pred(0, True), pred(0, True), pred(0, False), pred(1, False)]
    assert metrics.seen_accuracy(preds) == pytest.approx(0.6)


def test_average_and_final_accuracy():
    seen = [0.9, 0.8, 0.4]
    assert metrics.average_accuracy(seen) == pytest.approx(0.7)
    assert metrics.final_accuracy(seen) == 0.4


# Task 0 improves after task 1 (0.5 -> 0.9), then drops to 0.3; task 1 goes 0.8 -> 0.7.
MATRIX = [[0.5], [0.9, 0.8], [0.3, 0.7, 0.95]]


def test_forgetting_by_hand():
    # j=0: max(a00, a10) - a20 = 0.9 - 0.3 = 0.6; j=1: a11 - a21 = 0.8 - 0.7 = 0.1; mean 0.35.
    # The best earlier accuracy counts, not the diagonal: that is what separates it from -BWT.
    assert metrics.forgetting(MATRIX) == pytest.approx(0.35)


def test_backward_transfer_by_hand():
    # j=0: a20 - a00 = 0.3 - 0.5 = -0.2; j=1: a21 - a11 = 0.7 - 0.8 = -0.1; mean -0.15.
    assert metrics.backward_transfer(MATRIX) == pytest.approx(-0.15)


def test_learning_accuracy_is_the_mean_of_the_diagonal():
    # a00, a11, a22 = 0.5, 0.8, 0.95: mean 0.75; a task without test data (NaN on the diagonal) is skipped.
    assert metrics.learning_accuracy(MATRIX) == pytest.approx(0.75)
    assert metrics.learning_accuracy([[0.5], [0.1, math.nan], [0.3, 0.7, 0.9]]) == pytest.approx(0.7)


def test_forgetting_excludes_the_last_row_from_the_maximum_and_may_be_negative():
    # j=0: max(0.5, 0.4) - 0.9 = -0.4; j=1: 0.6 - 0.7 = -0.1; mean -0.25.
    assert metrics.forgetting([[0.5], [0.4, 0.6], [0.9, 0.7, 0.8]]) == pytest.approx(-0.25)


def test_one_task_has_no_forgetting_and_no_transfer():
    assert metrics.forgetting([[0.7]]) == 0.0
    assert metrics.backward_transfer([[0.7]]) == 0.0


def test_a_task_without_test_data_is_skipped_not_propagated():
    nan = math.nan
    matrix = [[nan], [nan, 0.8], [nan, 0.6, 0.9]]  # task 0 has no test instance
    assert metrics.forgetting(matrix) == pytest.approx(0.2)  # only j=1: 0.8 - 0.6
    assert metrics.backward_transfer(matrix) == pytest.approx(-0.2)


def test_mean_std_is_the_sample_std():
    mean, std = metrics.mean_std([0.5, 0.7, 0.9])
    assert mean == pytest.approx(0.7) and std == pytest.approx(0.2)  # sqrt((0.04 + 0 + 0.04) / 2)
    assert metrics.mean_std([0.4]) == (0.4, 0.0)


def test_confusions_count_wrong_predictions_and_break_ties_alphabetically():
    preds = [
        pred(0, False, "b", "a"),
        pred(0, False, "b", "a"),
        pred(0, False, "c", "a"),
        pred(0, False, "a", "c"),
        pred(0, False, "a", "b"),
        pred(0, True, "a", "a"),
        pred(0, True, "a", "a"),
        pred(0, True, "a", "a"),
    ]
    assert metrics.confusions(preds) == [("b", "a", 2), ("a", "b", 1), ("a", "c", 1), ("c", "a", 1)]
    assert metrics.confusions(preds, top=2) == [("b", "a", 2), ("a", "b", 1)]
    assert metrics.confusions([pred(0, True)]) == []


def test_paired_difference_by_hand():
    # d = [0.1, 0.05]: mean 0.075, std 0.0354, t = 0.075 / (0.0354 / sqrt 2) = 3.0 with 1 degree of freedom,
    # where Student's t is Cauchy: two-sided p = 1 - (2 / pi) * atan(3) = 0.2048.
    d = metrics.paired_difference([0.8, 0.75], [0.7, 0.7])
    assert d["n"] == 2
    assert d["mean"] == pytest.approx(0.075) and d["std"] == pytest.approx(0.05 / math.sqrt(2))
    assert d["p"] == pytest.approx(1 - 2 / math.pi * math.atan(3.0))


def test_paired_difference_has_no_p_value_for_one_pair_or_equal_differences():
    one = metrics.paired_difference([0.8], [0.7])
    assert one["mean"] == pytest.approx(0.1) and one["std"] == 0.0 and math.isnan(one["p"])
    # 0.3 - 0.2 and 0.5 - 0.4 differ in the last bit; still no spread to test
    same = metrics.paired_difference([0.3, 0.5], [0.2, 0.4])
    assert same["mean"] == pytest.approx(0.1) and math.isnan(same["p"])
