"""Tests for nnscratch.metrics."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from nnscratch.metrics import accuracy, classification_report, confusion_matrix, format_report

# A hand-checked example with three classes:
#   class 0: TP=1, FP=1 (a 2 predicted as 0), FN=1 (a 0 predicted as 1) -> P=1/2, R=1/2, F1=1/2
#   class 1: TP=2, FP=1, FN=0                                             -> P=2/3, R=1,   F1=4/5
#   class 2: TP=2, FP=0, FN=1                                             -> P=1,   R=2/3, F1=4/5
Y_TRUE = [0, 0, 1, 1, 2, 2, 2]
Y_PRED = [0, 1, 1, 1, 2, 0, 2]
CM = [[1, 1, 0],
      [0, 2, 0],
      [1, 0, 2]]


def test_accuracy_hand_example():
    assert accuracy(Y_TRUE, Y_PRED) == pytest.approx(5 / 7)
    assert isinstance(accuracy(Y_TRUE, Y_PRED), float)
    assert accuracy(np.array([3, 3], np.uint8), np.array([3, 3])) == 1.0


def test_confusion_matrix_hand_example():
    cm = confusion_matrix(Y_TRUE, Y_PRED, 3)
    assert cm.dtype == np.int64
    np.testing.assert_array_equal(cm, CM)


def test_confusion_matrix_unused_classes_and_empty_input():
    cm = confusion_matrix([1], [3], 5)
    expected = np.zeros((5, 5), np.int64)
    expected[1, 3] = 1
    np.testing.assert_array_equal(cm, expected)
    empty = confusion_matrix(np.array([], np.int64), np.array([], np.int64), 4)
    assert empty.shape == (4, 4) and empty.dtype == np.int64 and not empty.any()


@pytest.mark.parametrize("dtype", [np.uint8, np.int32, np.int64])
def test_confusion_matrix_matches_brute_force(dtype):
    # 40 classes: t * n + p reaches 1599, which overflows uint8 unless widened first.
    rng = np.random.default_rng(42)
    n = 40
    y_true = rng.integers(0, n, 3000).astype(dtype)
    y_pred = np.where(rng.random(3000) < 0.6, y_true, rng.integers(0, n, 3000)).astype(dtype)
    expected = np.zeros((n, n), np.int64)
    for t in range(n):
        for p in range(n):
            expected[t, p] = np.count_nonzero((y_true == t) & (y_pred == p))
    cm = confusion_matrix(y_true, y_pred, n)
    np.testing.assert_array_equal(cm, expected)
    assert cm.sum() == len(y_true)


def test_classification_report_hand_example():
    report = classification_report(Y_TRUE, Y_PRED, ["a", "b", "c"])
    assert list(report["classes"]) == ["a", "b", "c"]
    expected = {"a": (1 / 2, 1 / 2, 1 / 2, 2), "b": (2 / 3, 1.0, 4 / 5, 2),
                "c": (1.0, 2 / 3, 4 / 5, 3)}
    for name, (p, r, f1, support) in expected.items():
        row = report["classes"][name]
        assert row["precision"] == pytest.approx(p)
        assert row["recall"] == pytest.approx(r)
        assert row["f1"] == pytest.approx(f1)
        assert row["support"] == support and isinstance(row["support"], int)
    assert report["accuracy"] == pytest.approx(5 / 7)
    macro = report["macro_avg"]
    assert macro["precision"] == pytest.approx((1 / 2 + 2 / 3 + 1) / 3)
    assert macro["recall"] == pytest.approx((1 / 2 + 1 + 2 / 3) / 3)
    # Mean of per-class F1, not the F1 of the macro precision and recall.
    assert macro["f1"] == pytest.approx((1 / 2 + 4 / 5 + 4 / 5) / 3)
    assert macro["support"] == report["support"] == 7


def test_classification_report_zero_division_is_zero_without_warnings():
    # "b" is never predicted and has one sample; "c" has no samples and is never predicted.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report = classification_report([0, 0, 1], [0, 0, 0], ["a", "b", "c"])
    a, b, c = (report["classes"][k] for k in "abc")
    assert a["precision"] == pytest.approx(2 / 3) and a["recall"] == 1.0
    assert a["f1"] == pytest.approx(0.8)
    assert b == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert c == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert report["macro_avg"]["recall"] == pytest.approx(1 / 3)  # zero-support class counts
    assert all(np.isfinite(v) for v in report["macro_avg"].values())


def test_format_report_is_an_aligned_table():
    names = ["T-shirt/top", "Trouser", "c"]
    text = format_report(classification_report(Y_TRUE, Y_PRED, names))
    lines = text.rstrip("\n").split("\n")
    header, body = lines[0], [line for line in lines[1:] if line]
    assert header.split() == ["precision", "recall", "f1-score", "support"]
    assert [line.split()[0] for line in body[:3]] == ["T-shirt/top", "Trouser", "c"]
    assert body[3].split() == ["accuracy", "0.71", "7"]
    assert body[4].split() == ["macro", "avg", "0.72", "0.72", "0.70", "7"]
    assert body[0].split()[1:] == ["0.50", "0.50", "0.50", "2"]
    # Every row ends where the header ends (right-aligned support column), and
    # every number sits under its column's header.
    assert {len(line) for line in body} == {len(header)}
    for column in ("precision", "recall", "f1-score"):
        end = header.index(column) + len(column)
        assert all(line[end - 4:end].strip() for line in body if "accuracy" not in line)
    four = format_report(classification_report(Y_TRUE, Y_PRED, names), digits=4)
    assert "0.7143" in four


@pytest.mark.parametrize("y_true, y_pred, num_classes, message", [
    ([0, 1, 2], [0, 1], 3, "same length"),
    ([0, 1, 3], [0, 1, 2], 3, "y_true has 1 label"),
    ([0, 1, 2], [0, -1, 2], 3, "y_pred has 1 label"),
    ([0.0, 1.0], [0, 1], 3, "integer class labels"),
    ([True, False], [0, 1], 3, "integer class labels"),
    ([[0, 1]], [[0, 1]], 3, "1-D"),
    ([0, 1], [0, 1], 0, "num_classes"),
    ([0, 1], [0, 1], 2.5, "num_classes"),
])
def test_confusion_matrix_rejects_bad_inputs(y_true, y_pred, num_classes, message):
    with pytest.raises(ValueError, match=message):
        confusion_matrix(y_true, y_pred, num_classes)


def test_out_of_range_message_names_value_and_index():
    with pytest.raises(ValueError, match=r"first is 7 at index 2"):
        confusion_matrix([0, 1, 7, 9], [0, 1, 2, 2], 3)


def test_other_functions_reject_bad_inputs():
    with pytest.raises(ValueError, match="same length"):
        accuracy([0, 1], [0])
    with pytest.raises(ValueError, match="empty"):
        accuracy([], [])
    with pytest.raises(ValueError, match="unique"):
        classification_report([0, 1], [0, 1], ["a", "a"])
    with pytest.raises(ValueError, match="at least one class"):
        classification_report([], [], [])
    with pytest.raises(ValueError, match="at least one sample"):
        classification_report([], [], ["a", "b"])
    with pytest.raises(ValueError, match="outside 0..1"):
        classification_report([0, 2], [0, 1], ["a", "b"])


def test_classification_report_refuses_one_string_as_the_class_names():
    with pytest.raises(TypeError, match="not one string"):
        classification_report([0, 1], [0, 1], "ab")
