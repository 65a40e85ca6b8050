"""End to end on the real Fashion-MNIST: train with the default recipe for two
epochs, then check every output, ``evaluate`` and ``predict`` on real images
saved as PNG. These tests fail (never skip) when the data is missing.

One training run (the module-scoped ``run`` fixture) is shared by all tests.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from nnscratch import cli
from nnscratch.checkpoint import load_checkpoint
from nnscratch.datasets import CLASS_NAMES, load_fashion_mnist
from nnscratch.io import load

try:
    from . import helpers  # when tests/ is a package
except ImportError:
    import helpers

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
EPOCHS = 2


def nnscratch_command() -> list[str]:
    """The installed console script if there is one, else ``python -m nnscratch.cli``."""
    script = shutil.which("nnscratch")
    return [script] if script else helpers.cli_command()


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    helpers.require_real_data()
    out = tmp_path_factory.mktemp("e2e") / "run"
    result = subprocess.run([*nnscratch_command(), "train", "--epochs", str(EPOCHS),
                             "--out", str(out)],
                            capture_output=True, text=True, timeout=600, env=helpers.cli_env())
    assert result.returncode == 0, result.stderr
    assert f"Epoch {EPOCHS}/{EPOCHS}" in result.stdout
    return out


@pytest.fixture(scope="module")
def metrics(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())


@pytest.fixture(scope="module")
def test_set():
    helpers.require_real_data()
    _, (x_test, y_test) = load_fashion_mnist(download=False)
    return x_test, y_test


@pytest.fixture(scope="module")
def model(run: Path):
    return load(run / "model.npz")


def test_default_recipe_reaches_85_percent_in_two_epochs(metrics: dict) -> None:
    assert metrics["test"]["accuracy"] >= 0.85, metrics["test"]
    assert metrics["epochs"] == EPOCHS
    assert metrics["config"] == dict(cli.DEFAULTS, epochs=EPOCHS)


def test_all_outputs_exist_and_are_valid(run: Path, metrics: dict) -> None:
    for name in ("model.npz", "metrics.json", "checkpoint.npz", "confusion_matrix.png",
                 "training_curves.png", "misclassified.png"):
        assert (run / name).is_file(), name
    assert helpers.temp_files(run) == []
    for name in ("confusion_matrix.png", "training_curves.png", "misclassified.png"):
        data = (run / name).read_bytes()
        assert data[:8] == PNG_SIGNATURE, name
        assert len(data) > 1000, name

    assert metrics["class_names"] == list(CLASS_NAMES)
    cm = np.array(metrics["confusion_matrix"])
    assert cm.shape == (10, 10) and cm.dtype.kind == "i"
    assert cm.sum() == 10000
    assert (cm.sum(axis=1) == 1000).all()      # the test set has 1000 images per class
    assert np.trace(cm) / 10000 == pytest.approx(metrics["test"]["accuracy"], abs=1e-12)
    for split in ("train", "validation", "test"):
        assert 0 <= metrics[split]["accuracy"] <= 1 and metrics[split]["loss"] > 0

    per_class = metrics["per_class"]["classes"]
    assert list(per_class) == list(CLASS_NAMES)
    for i, name in enumerate(CLASS_NAMES):
        entry = per_class[name]
        assert entry["support"] == 1000
        assert entry["recall"] == pytest.approx(cm[i, i] / 1000)
        assert entry["precision"] == pytest.approx(cm[i, i] / cm[:, i].sum())
        assert 0 <= entry["f1"] <= 1
    assert metrics["per_class"]["accuracy"] == pytest.approx(metrics["test"]["accuracy"])

    assert set(metrics["versions"]) >= {"nnscratch", "python", "numpy", "numba"}
    assert metrics["versions"]["numpy"] == np.__version__
    from nnscratch import kernels
    assert metrics["backend"] == kernels.BACKEND
    history = metrics["history"]
    for key in ("loss", "accuracy", "val_loss", "val_accuracy", "lr", "epoch_time"):
        assert len(history[key]) == EPOCHS, key
    assert metrics["best_epoch"] in (1, 2)

    _, meta = load_checkpoint(run / "checkpoint.npz")
    assert (meta["epoch"], meta["batch"]) == (EPOCHS, 0)


def test_model_file_reproduces_the_reported_test_results(model, metrics: dict, test_set) -> None:
    x_test, y_test = test_set
    assert model.class_names == list(CLASS_NAMES)
    assert model.config()[0] == {"type": "Flatten"}
    assert [e["out_features"] for e in model.config() if e["type"] == "Dense"] == \
        [*cli.DEFAULTS["hidden"], 10]
    result = model.evaluate(x_test, y_test)
    assert result["accuracy"] == metrics["test"]["accuracy"]
    assert result["loss"] == pytest.approx(metrics["test"]["loss"], rel=1e-12)
    pred = model.predict(x_test).argmax(axis=1)
    cm = np.zeros((10, 10), int)
    np.add.at(cm, (y_test, pred), 1)
    assert cm.tolist() == metrics["confusion_matrix"]


def test_evaluate_command_reports_the_same_accuracy(run: Path, metrics: dict) -> None:
    result = subprocess.run([*nnscratch_command(), "evaluate", str(run / "model.npz"), "--json"],
                            capture_output=True, text=True, timeout=300, env=helpers.cli_env())
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["accuracy"] == metrics["test"]["accuracy"]
    assert report["confusion_matrix"] == metrics["confusion_matrix"]
    assert report["per_class"]["classes"].keys() == metrics["per_class"]["classes"].keys()


@pytest.fixture(scope="module")
def correctly_classified(model, test_set) -> list[int]:
    """The first five test images the model classifies correctly."""
    x_test, y_test = test_set
    pred = model.predict(x_test[:100]).argmax(axis=1)
    chosen = [int(i) for i in np.flatnonzero(pred == y_test[:100])[:5]]
    assert len(chosen) == 5
    return chosen


def _predict_json(capsys: pytest.CaptureFixture, model_path: Path, images: list[Path],
                  *options: str) -> list[dict]:
    code = cli.main(["predict", str(model_path), *map(str, images), "--json", *options])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads(captured.out)


def test_predict_command_returns_the_true_class_of_real_images(
        run: Path, test_set, correctly_classified: list[int], tmp_path: Path,
        capsys: pytest.CaptureFixture) -> None:
    from PIL import Image

    x_test, y_test = test_set
    paths = []
    for i in correctly_classified:
        paths.append(tmp_path / f"test{i}.png")
        Image.fromarray(np.asarray(x_test[i])).save(paths[-1])
    results = _predict_json(capsys, run / "model.npz", paths)
    assert [r["file"] for r in results] == list(map(str, paths))
    for r, i in zip(results, correctly_classified):
        top = r["predictions"][0]
        assert top["index"] == int(y_test[i]), (i, r)
        assert top["class"] == CLASS_NAMES[y_test[i]]
        probs = [p["probability"] for p in r["predictions"]]
        assert probs == sorted(probs, reverse=True) and 0 < probs[0] <= 1

    # the plain-text output agrees
    assert cli.main(["predict", str(run / "model.npz"), *map(str, paths), "--top", "1"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split(": ")[1].rsplit(" ", 1)[0] for line in lines] == \
        [CLASS_NAMES[y_test[i]] for i in correctly_classified]


def test_predict_handles_inverted_and_resized_photos(
        run: Path, test_set, correctly_classified: list[int], tmp_path: Path,
        capsys: pytest.CaptureFixture) -> None:
    from PIL import Image

    x_test, y_test = test_set
    paths = []
    for i in correctly_classified:
        photo = Image.fromarray(255 - np.asarray(x_test[i])).resize((100, 100), Image.BILINEAR)
        paths.append(tmp_path / f"photo{i}.png")
        photo.save(paths[-1])
        assert np.asarray(photo)[0, 0] > 200      # dark item on a white background
    results = _predict_json(capsys, run / "model.npz", paths, "--invert", "auto")
    agree = sum(r["predictions"][0]["index"] == int(y_test[i])
                for r, i in zip(results, correctly_classified))
    assert agree >= 4, results


def test_predict_reads_16_bit_grayscale_pngs(
        run: Path, test_set, correctly_classified: list[int], tmp_path: Path,
        capsys: pytest.CaptureFixture) -> None:
    """A 16-bit grayscale PNG of the same picture (pixel * 257) must be read as
    the same picture, not clipped to white at 255/65535."""
    from PIL import Image

    from nnscratch.images import load_image, read_grayscale

    x_test, y_test = test_set
    paths = []
    for i in correctly_classified:
        paths.append(tmp_path / f"deep{i}.png")
        Image.fromarray(np.asarray(x_test[i]).astype(np.uint16) * 257).save(paths[-1])
        with Image.open(paths[-1]) as img:
            assert img.mode.startswith("I")     # really stored with 16 bits
        np.testing.assert_allclose(read_grayscale(paths[-1]), x_test[i] / 255, atol=1e-9)
        assert np.array_equal(load_image(paths[-1], "no"), x_test[i])
    results = _predict_json(capsys, run / "model.npz", paths)
    assert [r["predictions"][0]["index"] for r in results] == \
        [int(y_test[i]) for i in correctly_classified]
