"""Classification metrics for integer class labels, in pure NumPy.

    from nnscratch.metrics import accuracy, confusion_matrix, classification_report, format_report
    cm = confusion_matrix(y_test, y_pred, num_classes=10)
    print(format_report(classification_report(y_test, y_pred, CLASS_NAMES)))

Labels are 1-D arrays (or sequences) of integers ``0 .. num_classes - 1``; any
integer dtype works, including the ``uint8`` labels of the datasets. For a class
``c``, counting over all samples:

    TP = true c,     predicted c        (the diagonal entry cm[c, c])
    FP = true not c, predicted c        (column c of cm without the diagonal)
    FN = true c,     predicted not c    (row c of cm without the diagonal)

    precision = TP / (TP + FP)          of the samples predicted c, the share that are c
    recall    = TP / (TP + FN)          of the samples that are c, the share found
    F1        = 2 * precision * recall / (precision + recall)
    support   = TP + FN                 number of samples whose true class is c
    accuracy  = sum_c TP / N            share of all samples predicted correctly

Zero division: a ratio whose denominator is 0 (no sample predicted ``c``, no
sample of class ``c``, or precision = recall = 0) is reported as 0.0, the same
as scikit-learn's default ``zero_division`` behaviour minus its warning.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from .checks import is_int

__all__ = ["accuracy", "classification_report", "confusion_matrix", "format_report"]


# ---- validation ----------------------------------------------------------------------
def _as_labels(values: ArrayLike, name: str) -> np.ndarray:
    """``values`` as a 1-D integer array, or a ValueError naming ``name``."""
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of class labels, got shape {array.shape}")
    if array.size and (array.dtype == np.bool_ or not np.issubdtype(array.dtype, np.integer)):
        raise ValueError(f"{name} must contain integer class labels, got dtype {array.dtype}")
    return array


def _as_label_pair(y_true: ArrayLike, y_pred: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    y_true, y_pred = _as_labels(y_true, "y_true"), _as_labels(y_pred, "y_pred")
    if len(y_true) != len(y_pred):
        raise ValueError(f"y_true and y_pred must have the same length, "
                         f"got {len(y_true)} and {len(y_pred)}")
    return y_true, y_pred


def _check_range(labels: np.ndarray, name: str, num_classes: int) -> None:
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"{name} has {bad.size} label(s) outside 0..{num_classes - 1} "
                         f"(num_classes={num_classes}); the first is {labels[i]} at index {i}")


def _as_num_classes(num_classes: Any) -> int:
    if isinstance(num_classes, (bool, np.bool_)):
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    try:
        n = operator.index(num_classes)
    except TypeError:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}") from None
    if n < 1:
        raise ValueError(f"num_classes must be a positive integer, got {n}")
    return n


def _safe_divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """Element-wise ``numerator / denominator`` as float64, with x / 0 = 0.0."""
    numerator = np.asarray(numerator, dtype=np.float64)
    denominator = np.asarray(denominator, dtype=np.float64)
    out = np.zeros(np.broadcast(numerator, denominator).shape)
    np.divide(numerator, denominator, out=out, where=denominator != 0)
    return out


# ---- metrics ---------------------------------------------------------------------------
def accuracy(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Share of samples whose predicted label equals the true one:
    ``accuracy = (number of i with y_true[i] == y_pred[i]) / N``.

    Both arguments are 1-D integer label arrays of the same, non-zero length.
    Raises ValueError otherwise (the accuracy of no samples is undefined).
    """
    y_true, y_pred = _as_label_pair(y_true, y_pred)
    if len(y_true) == 0:
        raise ValueError("accuracy of an empty set of samples is undefined")
    return float(np.count_nonzero(y_true == y_pred) / len(y_true))


def confusion_matrix(y_true: ArrayLike, y_pred: ArrayLike, num_classes: int) -> np.ndarray:
    """Counts ``cm[t, p]`` of samples with true class ``t`` predicted as ``p``.

    Rows are true classes and columns predicted classes, so ``cm[c, c]`` is the
    number of correct predictions of class ``c``, row sums are the class
    supports and column sums the number of predictions of each class. Returns a
    ``(num_classes, num_classes)`` int64 array (all zeros for empty inputs).

    Computed in one ``np.bincount`` over the flat cell index
    ``t * num_classes + p``. Raises ValueError if the inputs are not 1-D integer
    arrays of equal length or hold a label outside ``0 .. num_classes - 1``.
    """
    n = _as_num_classes(num_classes)
    y_true, y_pred = _as_label_pair(y_true, y_pred)
    _check_range(y_true, "y_true", n)
    _check_range(y_pred, "y_pred", n)
    # int64 before the arithmetic: uint8 labels would overflow in t * n + p.
    cells = y_true.astype(np.int64) * n + y_pred.astype(np.int64)
    return np.bincount(cells, minlength=n * n).astype(np.int64, copy=False).reshape(n, n)


def classification_report(y_true: ArrayLike, y_pred: ArrayLike,
                          class_names: Sequence[str]) -> dict[str, Any]:
    """Per-class precision, recall, F1 and support, their macro averages and
    the accuracy. Class ``i`` is named ``class_names[i]``; the number of names
    is the number of classes.

    Returns::

        {"classes": {name: {"precision": float, "recall": float,
                            "f1": float, "support": int}, ...},   # in class order
         "accuracy": float,
         "macro_avg": {"precision": float, "recall": float, "f1": float, "support": int},
         "support": int}                                          # total samples

    with precision = TP / (TP + FP), recall = TP / (TP + FN),
    F1 = 2 * P * R / (P + R) and a ratio with a zero denominator reported as
    0.0 (see the module docstring). Macro averages are unweighted means over
    *all* classes, including classes without samples (which count as 0.0
    recall), and the macro F1 is the mean of the per-class F1 scores, not the
    F1 of the macro precision and recall (both as in scikit-learn). The macro
    support is the total number of samples.

    Raises ValueError for invalid labels (see :func:`confusion_matrix`), no
    samples, or empty or duplicate class names.
    """
    if isinstance(class_names, (str, bytes)):
        raise TypeError(f"class_names must be a sequence of names, not one string: {class_names!r}")
    names = [str(name) for name in class_names]
    if not names:
        raise ValueError("class_names must name at least one class")
    if len(set(names)) != len(names):
        duplicates = sorted({name for name in names if names.count(name) > 1})
        raise ValueError(f"class_names must be unique, got duplicates {duplicates}")
    cm = confusion_matrix(y_true, y_pred, len(names))
    total = int(cm.sum())
    if total == 0:
        raise ValueError("classification_report needs at least one sample")
    tp = np.diag(cm)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    precision = _safe_divide(tp, predicted)
    recall = _safe_divide(tp, support)
    f1 = _safe_divide(2 * precision * recall, precision + recall)
    classes = {
        name: {"precision": float(precision[i]), "recall": float(recall[i]),
               "f1": float(f1[i]), "support": int(support[i])}
        for i, name in enumerate(names)
    }
    return {
        "classes": classes,
        "accuracy": float(tp.sum() / total),
        "macro_avg": {"precision": float(precision.mean()), "recall": float(recall.mean()),
                      "f1": float(f1.mean()), "support": total},
        "support": total,
    }


def format_report(report: dict[str, Any], digits: int = 2) -> str:
    """``report`` (from :func:`classification_report`) as an aligned text table
    in the layout of scikit-learn's ``classification_report``::

                      precision    recall  f1-score   support

         T-shirt/top       0.86      0.85      0.85      1000
             Trouser       0.99      0.97      0.98      1000
        ...
            accuracy                           0.89     10000
           macro avg       0.89      0.89      0.89     10000

    ``digits`` is the number of decimals of the ratios.
    """
    if not is_int(digits) or digits < 0:
        raise ValueError(f"format_report: digits must be an integer >= 0, got {digits!r}")
    headers = ("precision", "recall", "f1-score", "support")
    rows = [(name, m["precision"], m["recall"], m["f1"], m["support"])
            for name, m in report["classes"].items()]
    macro = report["macro_avg"]
    name_width = max([len("macro avg"), *(len(row[0]) for row in rows)])
    width = max(len("precision"), digits + 2)
    head = " " * name_width + "".join(f" {h:>{width}}" for h in headers)
    number = f" {{:>{width}.{digits}f}}"

    def line(name: str, values: Sequence[float | None], support: int) -> str:
        cells = "".join(" " * (width + 1) if v is None else number.format(v) for v in values)
        return f"{name:>{name_width}}{cells} {support:>{width}}"

    lines = [head, ""]
    lines += [line(name, (p, r, f), s) for name, p, r, f, s in rows]
    lines.append("")
    lines.append(line("accuracy", (None, None, report["accuracy"]), report["support"]))
    lines.append(line("macro avg", (macro["precision"], macro["recall"], macro["f1"]),
                      macro["support"]))
    return "\n".join(lines) + "\n"
