"""The real command line on the real data: interrupt and resume, determinism,
divergence. Runs ``python -m nnscratch.cli`` in subprocesses (10k training
images, a 64-unit hidden layer: a few seconds per run)."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from nnscratch import cli
from nnscratch.checkpoint import load_checkpoint
from nnscratch.io import load
from nnscratch.training import Trainer

try:
    from . import helpers  # when tests/ is a package
except ImportError:
    import helpers

# 40k training images a 784-512-10 net: each epoch takes long enough (~0.5 s
# here, more on a busy machine) that a signal 0-0.3 s after "Epoch 2/3" lands
# mid-training, not after it.
TRAIN = ["train", "--epochs", "3", "--hidden", "512", "--val-size", "20000", "--batch-size", "128"]
STEPS_PER_EPOCH = 313  # ceil(40000 / 128)


def run_train(out: Path, *extra: str) -> subprocess.CompletedProcess:
    result = helpers.run_cli(*TRAIN, *extra, "--out", out)
    assert result.returncode == 0, result.stderr
    return result


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One uninterrupted run of TRAIN."""
    helpers.require_real_data()
    out = tmp_path_factory.mktemp("reference") / "run"
    run_train(out)
    return out


def model_arrays(path: Path) -> dict[str, np.ndarray]:
    return helpers.read_npz_plain(path)[1]


def history_without_times(metrics: dict) -> dict:
    return {k: v for k, v in metrics["history"].items() if k != "epoch_time"}


def interrupt(out: Path, seed: int, sig: signal.Signals) -> subprocess.CompletedProcess:
    """Start TRAIN, wait for "Epoch 2/3", wait a seeded 0-0.3 s more, send ``sig``."""
    proc = subprocess.Popen(helpers.cli_command(*TRAIN, "--out", out), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=helpers.cli_env())
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("Epoch 2/3"):
                break
        else:
            pytest.fail("training ended without printing 'Epoch 2/3':\n" + "".join(lines))
        time.sleep(random.Random(seed).uniform(0.0, 0.3))
        proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return subprocess.CompletedProcess(proc.args, proc.returncode, "".join(lines) + stdout, stderr)


@pytest.mark.parametrize("seed,sig,resume_from", [
    (1, signal.SIGINT, "dir"),
    (2, signal.SIGTERM, "file"),
])
def test_interrupt_and_resume_matches_an_uninterrupted_run(
        tmp_path: Path, reference: Path, seed: int, sig: signal.Signals, resume_from: str) -> None:
    out = tmp_path / "run"
    stopped = interrupt(out, seed, sig)
    assert stopped.returncode == 130, stopped.stderr
    assert f"--resume {out}" in stopped.stderr
    assert sig.name in stopped.stderr
    checkpoint = out / "checkpoint.npz"
    assert checkpoint.is_file()
    assert not (out / "model.npz").exists()
    _, meta = load_checkpoint(checkpoint)
    assert 1 <= meta["epoch"] <= 2 and meta["optimizer"]["step"] < 3 * STEPS_PER_EPOCH
    assert helpers.temp_files(out) == []

    target = out if resume_from == "dir" else checkpoint
    resumed = helpers.run_cli("train", "--resume", target)
    assert resumed.returncode == 0, resumed.stderr
    assert f"Resuming {checkpoint} at epoch {meta['epoch'] + 1}" in resumed.stdout

    helpers.assert_same_arrays(model_arrays(out / "model.npz"),
                               model_arrays(reference / "model.npz"), "resumed model.npz")
    ours = json.loads((out / "metrics.json").read_text())
    theirs = json.loads((reference / "metrics.json").read_text())
    assert ours["test"] == theirs["test"]
    assert ours["confusion_matrix"] == theirs["confusion_matrix"]
    assert history_without_times(ours) == history_without_times(theirs)
    assert ours["config"] == theirs["config"]


def test_same_seed_same_command_gives_identical_files(tmp_path: Path, reference: Path) -> None:
    out = tmp_path / "again"
    run_train(out)
    helpers.assert_same_arrays(model_arrays(out / "model.npz"),
                               model_arrays(reference / "model.npz"), "model.npz")
    helpers.assert_same_arrays(model_arrays(out / "checkpoint.npz"),
                               model_arrays(reference / "checkpoint.npz"), "checkpoint.npz")
    ours = json.loads((out / "metrics.json").read_text())
    theirs = json.loads((reference / "metrics.json").read_text())
    assert history_without_times(ours) == history_without_times(theirs)
    assert ours["test"] == theirs["test"]


def test_resume_of_a_finished_run_changes_nothing(tmp_path: Path, reference: Path) -> None:
    """A checkpoint written after the last epoch resumes "at the end": the
    model written again is the same."""
    out = tmp_path / "finished"
    out.mkdir()
    (out / "checkpoint.npz").write_bytes((reference / "checkpoint.npz").read_bytes())
    result = helpers.run_cli("train", "--resume", out, "--quiet")
    assert result.returncode == 0, result.stderr
    assert "the end of training" in result.stdout
    helpers.assert_same_arrays(model_arrays(out / "model.npz"),
                               model_arrays(reference / "model.npz"), "model.npz")


@pytest.mark.parametrize("lr", ["1e6", "1e4"])
def test_absurd_learning_rate_fails_with_a_message_about_it(tmp_path: Path, lr: str) -> None:
    helpers.require_real_data()
    out = tmp_path / "run"
    result = helpers.run_cli("train", "--epochs", "2", "--hidden", "64", "--val-size", "50000",
                             "--lr", lr, "--out", out, "--quiet")
    assert result.returncode == 1, (
        f"--lr {lr} exited {result.returncode}; last output: "
        + " | ".join(result.stdout.strip().splitlines()[-8:]))
    errors = result.stderr.strip().splitlines()
    assert len(errors) == 1 and errors[0].startswith("nnscratch train: error: training diverged")
    assert "learning rate" in errors[0]
    assert not (out / "model.npz").exists()
    assert not (out / "metrics.json").exists()
    if (out / "checkpoint.npz").exists():
        assert str(out / "checkpoint.npz") in errors[0]
        load_checkpoint(out / "checkpoint.npz")
    else:  # diverged before the first checkpoint: no empty directory is left behind
        assert not out.exists()


@pytest.mark.parametrize("when", ["loss in epoch 2", "weights after epoch 1"])
def test_divergence_after_an_epoch_keeps_the_last_good_checkpoint(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture,
        when: str) -> None:
    helpers.require_real_data()
    real_count_step = Trainer._count_step
    steps_per_epoch = -(-10000 // 128)

    def count_step(self, loss, rows):  # after each step, on either path
        if when == "loss in epoch 2" and (self.epoch, self.batch) == (1, 2):
            loss = float("nan")
        if when == "weights after epoch 1" and (self.epoch, self.batch) == (1, steps_per_epoch - 1):
            self.model.parameters()[0].value[0, 0] = np.inf
        real_count_step(self, loss, rows)

    monkeypatch.setattr(Trainer, "_count_step", count_step)
    out = tmp_path / "run"
    code = cli.main(["train", "--epochs", "3", "--hidden", "32", "--val-size", "50000",
                     "--batch-size", "128", "--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nnscratch train: error: training diverged")
    assert "learning rate" in lines[0] and "epoch 2" in lines[0]
    assert f"The last good checkpoint is {out / 'checkpoint.npz'}" in lines[0]
    assert not (out / "model.npz").exists()
    _, meta = load_checkpoint(out / "checkpoint.npz")
    assert (meta["epoch"], meta["batch"]) == (1, 0)
    assert all(np.isfinite(v).all() for v in meta["trainer_state"]["model"].values())


def _resume_with_edited_config(reference: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                               key: str, value) -> tuple[str, Path]:
    """Resume a copy of the reference run's checkpoint with config[key] = value;
    it must fail with status 1 and one line naming the checkpoint, writing nothing.
    Returns that line and the run's folder."""
    meta, arrays = helpers.read_npz_plain(reference / "checkpoint.npz")
    meta.pop("arrays")
    assert meta["config"].get(key) != value
    meta["config"][key] = value
    out = tmp_path / "run"
    out.mkdir()
    checkpoint = helpers.write_model_file(out / "checkpoint.npz", meta, arrays)
    code = cli.main(["train", "--resume", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("nnscratch train: error: ") and str(checkpoint) in lines[0]
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.npz"]
    return lines[0], out


@pytest.mark.parametrize("key,value", [("lr", -1), ("schedule", "linear"), ("val_size", 60000),
                                       ("hidden", ["64"]), ("batch_size", 0)])
def test_resume_with_an_invalid_saved_configuration_is_a_one_line_error(
        reference: Path, tmp_path: Path, capsys: pytest.CaptureFixture, key: str, value) -> None:
    """The configuration in a checkpoint is read from a file: an invalid value
    must give exit status 1 and one line naming the checkpoint, not a traceback."""
    _resume_with_edited_config(reference, tmp_path, capsys, key, value)


@pytest.mark.parametrize("key,value,message", [
    ("seed", 7, "other training samples"),
    ("batch_size", 256, "was batch_size changed"),
    ("lr", 0.01, "lr is 0.01, the saved optimizer's 0.001"),
    ("weight_decay", 0.1, "weight_decay is 0.1"),
    ("dropout", 0.5, "hidden or dropout differ"),
    ("hidden", [256], "hidden or dropout differ"),
    ("epochs", 5, "learning rate"),
    ("schedule", "constant", "learning rate"),
    # (warmup_epochs: the last rate of a finished cosine run is 0 whatever the
    # warm-up; test_checkpoint.py checks it mid-run.)
])
def test_resume_with_a_valid_but_edited_saved_configuration_is_refused(
        reference: Path, tmp_path: Path, capsys: pytest.CaptureFixture, key: str, value,
        message: str) -> None:
    """Values that pass every check on their own but do not match the state saved
    with them: resuming would continue a different run than the one saved."""
    line, _ = _resume_with_edited_config(reference, tmp_path, capsys, key, value)
    assert message in line, line


def _one_line_failure(capsys: pytest.CaptureFixture, argv: list[str], command: str) -> str:
    try:
        code = cli.main(argv)
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err
    assert code in (1, 2), f"exit status {code}"
    lines = err.strip().splitlines()
    if lines[0].startswith("usage:"):  # a usage error: the command's usage, then one error line
        lines = [line for line in lines if not line.startswith((" ", "usage:"))]
    assert len(lines) == 1, err
    assert lines[0].startswith(("nnscratch: error: ", f"nnscratch {command}: error: "))
    return lines[0]


def test_train_out_below_a_file_is_a_one_line_error(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """--out FILE/run cannot be created: one line (usage or run-time error), no traceback."""
    helpers.require_real_data()
    blocker = tmp_path / "file.txt"
    blocker.write_text("a file, not a directory")
    line = _one_line_failure(capsys, ["train", "--epochs", "1", "--hidden", "8", "--val-size", "55000",
                                      "--out", str(blocker / "run"), "--quiet"], "train")
    assert str(blocker) in line
    assert blocker.read_text() == "a file, not a directory"


def test_evaluate_confusion_matrix_below_a_file_is_a_one_line_error(
        reference: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    blocker = tmp_path / "file.txt"
    blocker.write_text("a file, not a directory")
    line = _one_line_failure(capsys, ["evaluate", str(reference / "model.npz"), "--json",
                                      "--confusion-matrix", str(blocker / "cm.png")], "evaluate")
    assert str(blocker) in line


def test_resume_from_a_foreign_checkpoint_never_writes_over_another_run(
        reference: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "model.npz").write_bytes((reference / "model.npz").read_bytes())
    (victim / "copy-of-another-run.npz").write_bytes((reference / "checkpoint.npz").read_bytes())
    try:
        code = cli.main(["train", "--resume", str(victim / "copy-of-another-run.npz")])
    except SystemExit as exc:
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err
    assert f"{victim} (where --resume {victim / 'copy-of-another-run.npz'} would write, given no " \
        "--out) already holds a finished run" in err and "choose another --out" in err
    assert "continue it" not in err  # the advice must not be to resume the victim
    assert (victim / "model.npz").read_bytes() == (reference / "model.npz").read_bytes()


def test_a_full_disk_while_writing_results_says_training_is_safe(
        reference: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture) -> None:
    import errno

    out = tmp_path / "run"
    out.mkdir()
    (out / "checkpoint.npz").write_bytes((reference / "checkpoint.npz").read_bytes())

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(out / "metrics.json"))

    monkeypatch.setattr(cli, "_finish_run", full)
    assert cli.main(["train", "--resume", str(out)]) == 1
    err = capsys.readouterr().err
    assert "No space left on device" in err and "training is complete and saved in" in err
    assert f"nnscratch train --resume {out}" in err


def test_evaluate_and_predict_on_a_cli_trained_model(
        reference: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert cli.main(["evaluate", str(reference / "model.npz"), "--json",
                     "--confusion-matrix", str(tmp_path / "cm.png")]) == 0
    report = json.loads(capsys.readouterr().out)
    metrics = json.loads((reference / "metrics.json").read_text())
    assert report["accuracy"] == metrics["test"]["accuracy"]
    assert report["confusion_matrix"] == metrics["confusion_matrix"]
    assert (tmp_path / "cm.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    model = load(reference / "model.npz")
    assert model.class_names == list(cli.CLASS_NAMES)


def test_evaluate_needs_only_the_test_files(
        reference: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # leave the real cache be
    data = tmp_path / "test-only"
    data.mkdir()
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        found = [p for p in (helpers.FASHION_DIR / f"{name}.gz", helpers.FASHION_DIR / name)
                 if p.is_file()]
        (data / found[0].name).write_bytes(found[0].read_bytes())
    plot = tmp_path / "plots" / "cm.png"  # a folder that does not exist yet
    assert cli.main(["evaluate", str(reference / "model.npz"), "--data-dir", str(data),
                     "--json", "--confusion-matrix", str(plot)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert report["accuracy"] == json.loads((reference / "metrics.json").read_text())["test"]["accuracy"]
    # train still needs all four, and says which are missing
    assert cli.main(["train", "--data-dir", str(data), "--out", str(tmp_path / "run")]) == 1
    assert "train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz]" in capsys.readouterr().err


def test_interrupt_while_writing_results_exits_130_and_resume_writes_them(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    helpers.require_real_data()
    out = tmp_path / "run"
    args = ["train", "--epochs", "1", "--hidden", "16", "--val-size", "55000", "--out", str(out),
            "--quiet"]
    real_finish = cli._finish_run

    def interrupted(*a: object, **k: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_finish_run", interrupted)
    assert cli.main(args) == 130
    assert f"nnscratch train --resume {out}" in capsys.readouterr().err
    assert (out / "checkpoint.npz").is_file() and not (out / "model.npz").exists()
    monkeypatch.setattr(cli, "_finish_run", real_finish)
    assert cli.main(["train", "--resume", str(out), "--quiet"]) == 0
    assert (out / "model.npz").is_file() and (out / "metrics.json").is_file()
