"""The pictures a training run leaves behind, as PNG files.

    plot_training_curves(trainer.history, "run/curves.png")
    plot_confusion_matrix(confusion_matrix(y, pred, 10), CLASS_NAMES, "run/confusion.png")
    plot_misclassified(x_test, y, pred, CLASS_NAMES, "run/mistakes.png", probs=probs)

Figures are built on ``matplotlib.figure.Figure`` with an explicit Agg canvas,
never through ``pyplot``: no display is needed, the global backend and pyplot's
figure registry are left alone, and every figure is garbage once its function
returns. Each function writes its PNG atomically (a temporary file in the same
directory, then ``os.replace``), creates missing parent directories, and
returns the path as a :class:`pathlib.Path`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, PercentFormatter
from numpy.typing import ArrayLike

from .atomic import atomic_write
from .checks import is_int
from .metrics import _as_labels

__all__ = ["plot_confusion_matrix", "plot_misclassified", "plot_training_curves"]

DPI = 110
MAX_GRID = 5  # plot_misclassified shows at most MAX_GRID x MAX_GRID images


# ---- plumbing ------------------------------------------------------------------------
def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)  # attaches itself as fig.canvas
    return fig


def _save_png(fig: Figure, path: str | os.PathLike) -> Path:
    """Write ``fig`` to ``path`` as PNG, atomically (readers never see half a file)."""
    path = Path(path)  # like open() and nnscratch.save, no "~" expansion: that is the shell's job
    if path.suffix.lower() != ".png":  # the bytes are PNG whatever the name says
        raise ValueError(f"{path}: plots are written as PNG; give a file name ending in .png")
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(path, lambda handle: fig.savefig(handle, format="png", dpi=DPI))


MAX_LABEL = 24  # characters of a class name shown on an axis


def _plain_texts(names: Sequence[object]) -> list[str]:
    """Class names as literal text (matplotlib would read "$...$" as math),
    shortened to MAX_LABEL characters so long names cannot swamp the plot."""
    texts = [str(name) for name in names]
    texts = [t if len(t) <= MAX_LABEL else t[:MAX_LABEL - 1] + "\u2026" for t in texts]
    return [t.replace("$", r"\$") for t in texts]


def _labels(values: ArrayLike, name: str) -> np.ndarray:
    return _as_labels(values, name).astype(np.int64, copy=False)


# ---- confusion matrix ------------------------------------------------------------------
def _annotate(ax, values: np.ndarray, texts: list[list[str]], vmax: float, fontsize: float) -> None:
    """Write ``texts[i][j]`` in each cell: white where the cell is dark, grey
    where it is zero or empty (so the non-zero cells stand out), else black."""
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            value = values[i, j]
            if not np.isfinite(value) or value == 0:
                color = "0.6"
            else:
                color = "white" if value > 0.5 * vmax else "black"
            ax.text(j, i, texts[i][j], ha="center", va="center", fontsize=fontsize, color=color)


def _matrix_panel(fig: Figure, ax, values: np.ndarray, texts: list[list[str]], vmax: float,
                  class_names: Sequence[str], title: str, cbar_label: str,
                  fontsize: float, tick_fontsize: float) -> None:
    n = len(class_names)
    image = ax.imshow(values, cmap="Blues", vmin=0, vmax=vmax, interpolation="nearest")
    _annotate(ax, values, texts, vmax, fontsize)
    ax.set_title(title, fontsize=12)
    ax.set_xlabel("Predicted", fontsize=11)
    ax.set_ylabel("True", fontsize=11)
    ax.set_xticks(range(n), class_names, rotation=45, ha="right", rotation_mode="anchor",
                  fontsize=tick_fontsize)
    ax.set_yticks(range(n), class_names, fontsize=tick_fontsize)
    ax.tick_params(length=0)
    # Thin white lines between cells make rows and columns easy to follow.
    ax.set_xticks(np.arange(n + 1) - 0.5, minor=True)
    ax.set_yticks(np.arange(n + 1) - 0.5, minor=True)
    ax.grid(which="minor", color="white", linewidth=1)
    ax.tick_params(which="minor", length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    colorbar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.03)
    colorbar.set_label(cbar_label)


def plot_confusion_matrix(cm: ArrayLike, class_names: Sequence[str], path: str | os.PathLike,
                          *, title: str | None = None) -> Path:
    """Draw ``cm`` (rows = true class, columns = predicted, as returned by
    :func:`nnscratch.metrics.confusion_matrix`) twice, side by side: the raw
    counts, and each row divided by its sum in percent (the recall of each
    true class on the diagonal, where its mistakes go off it). Rows without
    samples are shown blank with a dash.

    ``title`` defaults to "Confusion matrix" with the overall accuracy and the
    number of samples. Raises ValueError unless ``cm`` is a square matrix of
    finite non-negative counts with one class name per row.
    """
    counts = np.asarray(cm)
    if counts.ndim != 2 or counts.shape[0] != counts.shape[1] or counts.shape[0] == 0:
        raise ValueError(f"cm must be a non-empty square matrix, got shape {counts.shape}")
    if not np.issubdtype(counts.dtype, np.number) or counts.dtype == np.bool_:
        raise ValueError(f"cm must hold numeric counts, got dtype {counts.dtype}")
    counts = counts.astype(np.float64)
    if not np.isfinite(counts).all() or (counts < 0).any():
        raise ValueError("cm must hold finite, non-negative counts")
    names = _plain_texts(class_names)
    n = counts.shape[0]
    if len(names) != n:
        raise ValueError(f"cm is {n}x{n} but {len(names)} class names were given")

    row_sums = counts.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        percent = np.where(row_sums > 0, 100.0 * counts / row_sums, np.nan)
    integral = bool(np.all(counts == np.round(counts)))
    count_texts = [[f"{v:.0f}" if integral else f"{v:.3g}" for v in row] for row in counts]
    percent_texts = [["–" if np.isnan(v) else f"{v:.1f}" for v in row] for row in percent]

    # Cells shrink as classes are added; so does the text in them. A panel is
    # about 430 pt wide and a digit about 0.6 em, so the longest text fits its
    # cell when fontsize <= 645 / (n * longest).
    longest = max(len(t) for row in count_texts + percent_texts for t in row)
    fontsize = max(4.0, min(14.0, 100.0 / n, 645.0 / (n * longest)))
    tick_fontsize = max(5.0, min(11.0, 110.0 / n))

    fig = _new_figure(16, 7.2)
    left, right = fig.subplots(1, 2)
    total = counts.sum()
    _matrix_panel(fig, left, counts, count_texts, max(counts.max(), 1.0), names,
                  "Counts", "samples", fontsize, tick_fontsize)
    _matrix_panel(fig, right, percent, percent_texts, 100.0, names,
                  "Row-normalized: % of each true class (diagonal = recall)",
                  "% of true class", fontsize, tick_fontsize)
    if title is None:
        title = (f"Confusion matrix — accuracy {np.trace(counts) / total:.2%} on "
                 f"{total:,.0f} samples" if total else "Confusion matrix — no samples")
    fig.suptitle(title, fontsize=14)
    return _save_png(fig, path)


# ---- training curves -------------------------------------------------------------------
def _series(history: Mapping[str, Sequence[float]], key: str, epochs: int | None) -> np.ndarray | None:
    if key not in history:
        return None
    values = np.asarray(history[key], dtype=np.float64)
    if values.ndim != 1:
        raise ValueError(f"history[{key!r}] must be a list of per-epoch numbers")
    if epochs is not None and len(values) != epochs:
        raise ValueError(f"history[{key!r}] has {len(values)} entries but "
                         f"history['loss'] has {epochs}")
    return values


def plot_training_curves(history: Mapping[str, Sequence[float]], path: str | os.PathLike) -> Path:
    """Two panels, loss and accuracy per epoch (epochs numbered from 1), each
    with the training line and, when ``history`` has ``val_loss`` /
    ``val_accuracy``, the validation line. ``history`` is a dict of equally
    long per-epoch lists as kept by :class:`nnscratch.Trainer`; other keys
    (``lr``, ``epoch_time``) are ignored. Accuracies in [0, 1] are shown as
    percentages. With no completed epoch yet the figure says so.

    Raises ValueError if ``loss`` or ``accuracy`` is missing or the lists'
    lengths differ.
    """
    for key in ("loss", "accuracy"):
        if key not in history:
            raise ValueError(f"history must have a {key!r} list, got keys {sorted(history)}")
    loss = _series(history, "loss", None)
    epochs = len(loss)
    series = {key: _series(history, key, epochs)
              for key in ("accuracy", "val_loss", "val_accuracy")}

    fig = _new_figure(13, 5)
    axes = fig.subplots(1, 2)
    x = np.arange(1, epochs + 1)
    marker = "o" if epochs <= 30 else None
    panels = ((axes[0], "Loss", loss, series["val_loss"]),
              (axes[1], "Accuracy", series["accuracy"], series["val_accuracy"]))
    for ax, name, train, val in panels:
        ax.set_title(name, fontsize=13)
        ax.set_xlabel("Epoch")
        ax.set_ylabel(name.lower())
        ax.grid(True, alpha=0.35)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        if epochs == 0:
            ax.text(0.5, 0.5, "no completed epochs yet", transform=ax.transAxes,
                    ha="center", va="center", fontsize=12, color="0.4")
            ax.set_xticks([])
            ax.set_yticks([])
            continue
        ax.plot(x, train, marker=marker, markersize=4, label="train", color="tab:blue")
        if val is not None:
            ax.plot(x, val, marker=marker, markersize=4, label="validation", color="tab:orange")
        pad = max(0.5, 0.03 * epochs)  # whole markers at both ends, sane ticks for 1 epoch
        ax.set_xlim(1 - pad, epochs + pad)
        ax.legend(loc="best")
    accuracies = [a for a in (series["accuracy"], series["val_accuracy"]) if a is not None]
    if epochs and all(np.nanmax(np.abs(a), initial=0.0) <= 1.0 for a in accuracies):
        axes[1].yaxis.set_major_formatter(PercentFormatter(xmax=1.0))
    fig.suptitle(f"Training curves ({epochs} epoch{'s' if epochs != 1 else ''})", fontsize=14)
    return _save_png(fig, path)


# ---- misclassified examples ------------------------------------------------------------
def _as_square_images(images: ArrayLike) -> np.ndarray:
    array = np.asarray(images)
    if array.ndim == 2:
        side = math.isqrt(array.shape[1])
        if side * side != array.shape[1] or side == 0:
            raise ValueError(f"flat images must have a square number of pixels (e.g. 784), "
                             f"got shape {array.shape}")
        array = array.reshape(len(array), side, side)
    elif array.ndim != 3:
        raise ValueError(f"images must have shape (N, 28, 28) or (N, 784), got {array.shape}")
    if not np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_:
        raise ValueError(f"images must be numeric, got dtype {array.dtype}")
    return array


def _confidences(probs: ArrayLike, y_pred: np.ndarray) -> np.ndarray:
    """The probability of each predicted class, from (N,) or (N, C) ``probs``."""
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim == 1 and len(p) == len(y_pred):
        return p
    if p.ndim == 2 and len(p) == len(y_pred):
        if y_pred.size and y_pred.max() >= p.shape[1]:
            raise ValueError(f"probs has {p.shape[1]} columns but y_pred has label {y_pred.max()}")
        return p[np.arange(len(y_pred)), y_pred]
    raise ValueError(f"probs must have shape (N,) or (N, num_classes) with N={len(y_pred)}, "
                     f"got {p.shape}")


def plot_misclassified(images: ArrayLike, y_true: ArrayLike, y_pred: ArrayLike,
                       class_names: Sequence[str], path: str | os.PathLike, *,
                       probs: ArrayLike | None = None, max_images: int = 25) -> Path:
    """A grid (at most 5x5) of the images whose prediction is wrong, each titled
    ``true: X / pred: Y (p=0.93)`` on two lines.

    ``images`` is (N, 28, 28) or (N, 784) (any square size works), uint8 in
    0..255 or float (shown on the common range of the displayed images).
    ``probs`` is optional: either the probability of each predicted class,
    shape (N,), or the full (N, num_classes) probabilities; when given, the
    most confident mistakes are shown first, otherwise mistakes appear in
    dataset order. If nothing is misclassified, the figure says so.

    Raises ValueError for mismatched lengths, labels without a class name, or
    ``max_images`` outside 1..25.
    """
    if not is_int(max_images) or not 1 <= max_images <= MAX_GRID * MAX_GRID:
        raise ValueError(f"max_images must be an integer from 1 to {MAX_GRID * MAX_GRID}, "
                         f"got {max_images!r}")
    pictures = _as_square_images(images)
    y_true, y_pred = _labels(y_true, "y_true"), _labels(y_pred, "y_pred")
    if not len(pictures) == len(y_true) == len(y_pred):
        raise ValueError(f"images, y_true and y_pred must have the same length, got "
                         f"{len(pictures)}, {len(y_true)} and {len(y_pred)}")
    names = _plain_texts(class_names)
    for labels, label_name in ((y_true, "y_true"), (y_pred, "y_pred")):
        if labels.size and (labels.min() < 0 or labels.max() >= len(names)):
            raise ValueError(f"{label_name} has labels outside 0..{len(names) - 1} "
                             f"({len(names)} class names)")
    confidence = None if probs is None else _confidences(probs, y_pred)

    wrong = np.flatnonzero(y_true != y_pred)
    if confidence is not None:
        wrong = wrong[np.argsort(-confidence[wrong], kind="stable")]
    shown = wrong[:max_images]

    if shown.size == 0:
        fig = _new_figure(6, 2.5)
        fig.text(0.5, 0.5, f"No misclassified images\n(all {len(y_true):,} predictions correct)",
                 ha="center", va="center", fontsize=14)
        return _save_png(fig, path)

    columns = min(MAX_GRID, shown.size)
    rows = math.ceil(shown.size / columns)
    # At least 6 in wide so the title fits above a single image.
    fig = _new_figure(max(6.0, 2.0 * columns + 0.4), 2.35 * rows + 0.6)
    axes = np.atleast_1d(fig.subplots(rows, columns, squeeze=False)).ravel()
    if pictures.dtype == np.uint8:
        vmin, vmax = 0.0, 255.0
    else:
        selected = pictures[shown].astype(np.float64)
        vmin, vmax = float(np.nanmin(selected)), float(np.nanmax(selected))
        if vmin == vmax:
            vmax = vmin + 1.0
    for ax, index in zip(axes, shown):
        ax.imshow(pictures[index], cmap="gray", vmin=vmin, vmax=vmax, interpolation="nearest")
        p = "" if confidence is None else f" (p={confidence[index]:.2f})"
        ax.set_title(f"true: {names[y_true[index]]} /\npred: {names[y_pred[index]]}{p}",
                     fontsize=8.5)
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in axes[shown.size:]:
        ax.set_axis_off()
    order = "most confident first" if confidence is not None else "in dataset order"
    fig.suptitle(f"Misclassified: {wrong.size:,} of {len(y_true):,} "
                 f"(showing {shown.size}, {order})", fontsize=12)
    return _save_png(fig, path)
