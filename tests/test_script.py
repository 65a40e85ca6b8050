"""scripts/train_fashion_mnist.py is the same pipeline as `nnscratch train`."""

import subprocess
import sys
from pathlib import Path

import helpers
import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def test_training_script_matches_the_cli_bit_for_bit(tmp_path: Path) -> None:
    helpers.require_real_data()
    script = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "train_fashion_mnist.py"), "--epochs", "1",
         "--out", str(tmp_path / "script")], capture_output=True, text=True, env=helpers.cli_env())
    assert script.returncode == 0, script.stderr
    for name in ("model.npz", "metrics.json", "confusion_matrix.png", "training_curves.png",
                 "misclassified.png"):
        assert (tmp_path / "script" / name).is_file(), name
    cli = helpers.run_cli("train", "--epochs", "1", "--out", tmp_path / "cli", "--quiet")
    assert cli.returncode == 0, cli.stderr
    a, b = np.load(tmp_path / "script" / "model.npz"), np.load(tmp_path / "cli" / "model.npz")
    weights = [k for k in a.files if k != "__meta__"]
    assert weights and sorted(weights) == sorted(k for k in b.files if k != "__meta__")
    for key in weights:
        assert np.array_equal(a[key], b[key]), key


def test_training_script_checks_its_options_before_any_work(tmp_path: Path) -> None:
    script = [sys.executable, str(ROOT / "scripts" / "train_fashion_mnist.py")]
    (tmp_path / "done").mkdir()
    (tmp_path / "done" / "model.npz").write_bytes(b"a finished run")
    (tmp_path / "file").write_text("not a directory")
    for args, message in ((["--epochs", "0"], "invalid positive integer"),
                          (["--seed", "-1"], "invalid integer >= 0"),
                          (["--out", str(tmp_path / "done")], "already holds a run"),
                          (["--out", str(tmp_path / "file" / "x")], "Not a directory")):
        result = subprocess.run(script + args, capture_output=True, text=True, env=helpers.cli_env())
        assert result.returncode == 2 and message in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr
    assert (tmp_path / "done" / "model.npz").read_bytes() == b"a finished run"


def test_the_pytorch_comparison_says_when_pytorch_is_missing() -> None:
    # PyTorch is not a dependency (CI does not have it): the script must say so in one
    # line, exit 1, and not start any work. Hidden here, wherever it is installed.
    hide_torch = ("import runpy, sys; sys.modules['torch'] = None; sys.argv = [sys.argv[1]]; "
                  "runpy.run_path(sys.argv[0], run_name='__main__')")
    result = subprocess.run(
        [sys.executable, "-c", hide_torch, str(ROOT / "scripts" / "compare_with_pytorch.py")],
        capture_output=True, text=True, env=helpers.cli_env())
    assert result.returncode == 1
    assert result.stderr == ("compare_with_pytorch.py: PyTorch is not installed "
                             "(pip install torch==2.13.0)\n")
