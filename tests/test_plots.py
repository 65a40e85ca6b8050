"""Tests for nnscratch.plots: each function writes a real, loadable PNG of the
expected size, atomically, without touching pyplot."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
from matplotlib.figure import Figure

from nnscratch import plots
from nnscratch.plots import DPI, plot_confusion_matrix, plot_misclassified, plot_training_curves

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def check_png(path: Path, width_in: float, height_in: float) -> np.ndarray:
    """Assert ``path`` is a PNG of about width_in x height_in inches at DPI; return its pixels."""
    with open(path, "rb") as handle:
        assert handle.read(8) == PNG_SIGNATURE
    pixels = matplotlib.image.imread(path)
    height, width = pixels.shape[:2]
    assert abs(width - width_in * DPI) <= 2, (width, width_in * DPI)
    assert abs(height - height_in * DPI) <= 2, (height, height_in * DPI)
    assert pixels.std() > 0.01  # not a blank canvas
    return pixels


def no_temp_files(directory: Path) -> bool:
    return not [p for p in directory.iterdir() if p.name.endswith(".tmp")]


def test_confusion_matrix_png(tmp_path):
    rng = np.random.default_rng(0)
    cm = rng.integers(0, 60, (10, 10))
    cm[np.arange(10), np.arange(10)] = rng.integers(500, 1000, 10)
    cm[3] = 0  # a class without samples: its normalized row is undefined
    path = tmp_path / "cm.png"
    result = plot_confusion_matrix(cm, NAMES, path)
    assert result == path
    check_png(path, 16, 7.2)
    assert no_temp_files(tmp_path)
    # A title and a str path work too, and missing directories are created.
    nested = tmp_path / "run" / "plots" / "cm2.png"
    assert plot_confusion_matrix(cm[:3, :3], NAMES[:3], str(nested), title="tiny") == nested
    check_png(nested, 16, 7.2)


def test_dollar_signs_in_class_names_are_text_not_math(tmp_path, monkeypatch):
    """'$^$' is a mathtext syntax error and '$10-$20' would lose its dollars."""
    names = ["a $^$ b", "Size $10-$20"]
    assert plots._plain_texts(names) == [r"a \$^\$ b", r"Size \$10-\$20"]
    plot_confusion_matrix([[3, 1], [0, 4]], names, tmp_path / "cm.png")
    images = np.zeros((2, 28, 28), np.uint8)
    plot_misclassified(images, [0, 1], [1, 0], names, tmp_path / "mis.png")
    assert (tmp_path / "cm.png").exists() and (tmp_path / "mis.png").exists()


def test_all_zero_confusion_matrix_is_titled_no_samples(tmp_path, monkeypatch):
    titles = []
    original = Figure.suptitle
    monkeypatch.setattr(Figure, "suptitle", lambda self, t, **kw: titles.append(t) or original(self, t, **kw))
    plot_confusion_matrix(np.zeros((2, 2)), ["a", "b"], tmp_path / "cm.png")
    assert titles == ["Confusion matrix — no samples"]


@pytest.mark.parametrize("cm, names, message", [
    (np.ones((3, 4)), NAMES[:3], "square"),
    (np.ones((3, 3)), NAMES[:2], "2 class names"),
    (-np.ones((2, 2)), NAMES[:2], "non-negative"),
    (np.full((2, 2), np.nan), NAMES[:2], "finite"),
])
def test_confusion_matrix_rejects_bad_input(tmp_path, cm, names, message):
    with pytest.raises(ValueError, match=message):
        plot_confusion_matrix(cm, names, tmp_path / "cm.png")
    assert not list(tmp_path.iterdir())


def test_training_curves_with_and_without_validation(tmp_path):
    history = {"loss": [1.2, 0.8, 0.6, 0.5], "accuracy": [0.6, 0.7, 0.8, 0.85],
               "val_loss": [1.3, 0.9, 0.7, 0.65], "val_accuracy": [0.55, 0.68, 0.77, 0.8],
               "lr": [1e-3] * 4, "epoch_time": [1.0] * 4}
    with_val = plot_training_curves(history, tmp_path / "curves.png")
    check_png(with_val, 13, 5)
    train_only = {k: history[k] for k in ("loss", "accuracy")}
    without_val = plot_training_curves(train_only, tmp_path / "train_only.png")
    check_png(without_val, 13, 5)
    assert with_val.read_bytes() != without_val.read_bytes()
    # One epoch and no epoch at all (an interrupted first epoch) also work.
    check_png(plot_training_curves({"loss": [0.5], "accuracy": [0.8]}, tmp_path / "one.png"), 13, 5)
    check_png(plot_training_curves({"loss": [], "accuracy": []}, tmp_path / "none.png"), 13, 5)
    assert no_temp_files(tmp_path)


def test_training_curves_rejects_bad_history(tmp_path):
    with pytest.raises(ValueError, match="'accuracy'"):
        plot_training_curves({"loss": [1.0]}, tmp_path / "c.png")
    with pytest.raises(ValueError, match="val_loss"):
        plot_training_curves({"loss": [1.0, 0.5], "accuracy": [0.5, 0.6], "val_loss": [1.0]},
                             tmp_path / "c.png")


def fake_images(n: int, flat: bool = False, dtype=np.uint8) -> np.ndarray:
    rng = np.random.default_rng(n)
    images = rng.integers(0, 256, (n, 28, 28)).astype(dtype)
    return images.reshape(n, 784) if flat else images


@pytest.mark.parametrize("flat, dtype", [(False, np.uint8), (True, np.uint8), (True, np.float32)])
def test_misclassified_grid(tmp_path, flat, dtype):
    n = 40
    y_true = np.arange(n) % 10
    y_pred = y_true.copy()
    y_pred[:7] = (y_true[:7] + 1) % 10  # 7 mistakes: a 5 + 2 grid
    probs = np.random.default_rng(1).dirichlet(np.ones(10), n)
    path = plot_misclassified(fake_images(n, flat, dtype), y_true, y_pred, NAMES,
                              tmp_path / "wrong.png", probs=probs)
    check_png(path, 2.0 * 5 + 0.4, 2.35 * 2 + 0.6)
    assert no_temp_files(tmp_path)


def test_misclassified_caps_at_a_5x5_grid(tmp_path):
    n = 60
    y_true = np.zeros(n, np.int64)
    y_pred = np.ones(n, np.int64)  # all 60 wrong
    path = plot_misclassified(fake_images(n), y_true, y_pred, NAMES, tmp_path / "w.png")
    check_png(path, 2.0 * 5 + 0.4, 2.35 * 5 + 0.6)
    few = plot_misclassified(fake_images(n), y_true, y_pred, NAMES, tmp_path / "few.png",
                             probs=np.full(n, 0.9), max_images=3)
    check_png(few, 2.0 * 3 + 0.4, 2.35 + 0.6)


def test_misclassified_with_zero_errors(tmp_path):
    y = np.arange(10)
    path = plot_misclassified(fake_images(10), y, y, NAMES, tmp_path / "none.png")
    check_png(path, 6, 2.5)


def test_misclassified_rejects_bad_input(tmp_path):
    y = np.arange(5)
    with pytest.raises(ValueError, match="same length"):
        plot_misclassified(fake_images(4), y, y, NAMES, tmp_path / "w.png")
    with pytest.raises(ValueError, match="square number"):
        plot_misclassified(np.zeros((5, 783)), y, y, NAMES, tmp_path / "w.png")
    with pytest.raises(ValueError, match="max_images"):
        plot_misclassified(fake_images(5), y, y, NAMES, tmp_path / "w.png", max_images=26)
    with pytest.raises(ValueError, match="probs"):
        plot_misclassified(fake_images(5), y, y, NAMES, tmp_path / "w.png", probs=np.ones(4))
    with pytest.raises(ValueError, match="outside"):
        plot_misclassified(fake_images(5), y, y, NAMES[:3], tmp_path / "w.png")


def test_confidences_pick_the_predicted_class():
    probs = np.array([[0.1, 0.9], [0.7, 0.3]])
    np.testing.assert_allclose(plots._confidences(probs, np.array([1, 1])), [0.9, 0.3])
    np.testing.assert_allclose(plots._confidences(np.array([0.4, 0.6]), np.array([0, 1])),
                               [0.4, 0.6])


def test_failed_save_keeps_old_file_and_leaves_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "curves.png"
    path.write_bytes(b"old")

    def broken_savefig(self, *args, **kwargs):
        args[0].write(b"partial")
        raise RuntimeError("disk full")

    monkeypatch.setattr(Figure, "savefig", broken_savefig)
    with pytest.raises(RuntimeError, match="disk full"):
        plot_training_curves({"loss": [1.0], "accuracy": [0.5]}, path)
    assert path.read_bytes() == b"old"
    assert no_temp_files(tmp_path)


def test_new_file_respects_umask(tmp_path):
    path = plot_training_curves({"loss": [1.0], "accuracy": [0.5]}, tmp_path / "c.png")
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_pyplot_is_never_imported(tmp_path):
    code = ("import sys; from nnscratch.plots import plot_training_curves; "
            "plot_training_curves({'loss': [1.0], 'accuracy': [0.5]}, sys.argv[1]); "
            "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot was imported'")
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path / "c.png")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "c.png").read_bytes()[:8] == PNG_SIGNATURE
