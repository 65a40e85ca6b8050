"""The ``nnscratch`` command: train, evaluate, predict.

    nnscratch train [--epochs N] [--hidden 1024] [--out DIR] ...
    nnscratch train --resume DIR
    nnscratch evaluate DIR/model.npz
    nnscratch predict DIR/model.npz shirt.jpg boot.png --json

Exit status: 0 success, 1 a run-time failure (bad data, divergence, an image
that could not be read), 2 a usage error (argparse style, nothing written),
130 interrupted (during training a checkpoint was saved, and the message says
how to resume).
"""

from __future__ import annotations

import argparse
import errno
import json
import math
import os
import platform
import signal
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__, _interrupted
from .atomic import atomic_write, remove_stale_temporaries
from .augment import RandomShiftFlip
from .checkpoint import load_checkpoint, save_checkpoint
from .checks import is_int, is_number
from .datasets import CLASS_NAMES, DataError, load_fashion_mnist, load_fashion_mnist_split
from .images import ImageError, load_image, looks_blank
from .io import MAX_PARAMETERS, ModelFileError, class_names_of, load, save
from .layers import Dense, Dropout, Flatten, ReLU
from .model import Sequential
from .optim import Adam
from .training import Trainer, TrainingDiverged, TrainingInterrupted

# The default recipe (chosen on the validation split; see README "Results").
DEFAULTS: dict[str, Any] = {
    "epochs": 35, "batch_size": 256, "hidden": [1024], "dropout": 0.3, "lr": 1e-3,
    "weight_decay": 0.0, "schedule": "cosine", "warmup_epochs": 1.0, "seed": 0,
    "val_size": 5000, "augment": False, "max_shift": 2, "flip": 0.5,
}
TRAINING_OPTIONS = tuple(k for k in DEFAULTS)


class CLIError(Exception):
    """A failure to report in one line (exit status 1)."""


# ---- argument types: argparse turns their ValueErrors into "invalid ... value" ----
def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError
    return value


def shift_pixels(text: str) -> int:
    # Beyond 13 pixels (half the image) the item can leave the 28x28 frame entirely.
    value = int(text)
    if not 0 <= value <= 13:
        raise ValueError
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not (value > 0 and np.isfinite(value)):
        raise ValueError
    return value


def non_negative_float(text: str) -> float:
    value = float(text)
    if not (value >= 0 and np.isfinite(value)):
        raise ValueError
    return value


def drop_probability(text: str) -> float:
    value = float(text)
    if not 0 <= value < 1:
        raise ValueError
    return value


def probability(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise ValueError
    return value


def path_name(text: str) -> Path:
    # Path("") is ".": an empty --out would scatter a run into the current directory.
    if not text.strip():
        raise ValueError
    return Path(text)


def png_path(text: str) -> Path:
    # The plot is always PNG; a .jpg or .pdf name would hold PNG bytes.
    # (".png" alone is a name with no suffix; "x.png/" names a directory)
    if Path(text).suffix.lower() != ".png" or os.path.basename(text) != Path(text).name:
        raise argparse.ArgumentTypeError(f"must be a file name ending in .png, got {text!r}")
    return path_name(text)


for _f, _name in ((positive_int, "positive integer"), (non_negative_int, "integer >= 0"),
                  (shift_pixels, "pixel shift (0 to 13)"),
                  (positive_float, "positive number"), (non_negative_float, "number >= 0"),
                  (drop_probability, "probability in [0, 1)"), (probability, "probability in [0, 1]"),
                  (path_name, "non-empty path")):
    _f.__name__ = _name  # argparse names the type in its error message


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nnscratch", description="Train, evaluate and use Fashion-MNIST classifiers "
        "built with nnscratch.")
    parser.add_argument("--version", action="version", version=f"nnscratch {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    # main() hands each command its own parser, so usage errors show its usage.
    parser.commands = sub.choices

    t = sub.add_parser("train", help="train a classifier and write model, metrics and plots",
                       description="Train an MLP on Fashion-MNIST. Holds out a seeded validation "
                       "split of the 60k training images, reports the test set once at the end, "
                       "and writes model.npz, metrics.json, checkpoint.npz and three PNG plots "
                       "into --out. Defaults are the README's default recipe.")
    def option(name: str, kind: Any, text: str, **kw: Any) -> None:
        key = name[2:].replace("-", "_")
        default = " ".join(map(str, DEFAULTS[key])) if isinstance(DEFAULTS.get(key), list) \
            else DEFAULTS.get(key)
        t.add_argument(name, type=kind, help=f"{text} (default {default})", **kw)

    option("--epochs", positive_int, "epochs to train")
    option("--batch-size", positive_int, "mini-batch size")
    option("--hidden", positive_int, "hidden layer sizes", nargs="+", metavar="UNITS")
    option("--dropout", drop_probability, "dropout probability after each hidden layer")
    option("--lr", positive_float, "Adam learning rate")
    option("--weight-decay", non_negative_float, "AdamW decoupled weight decay")
    option("--schedule", str, "learning-rate schedule", choices=("constant", "cosine"))
    option("--warmup-epochs", non_negative_float, "linear warm-up of the cosine schedule")
    t.add_argument("--augment", action="store_true", default=None,
                   help="random shifts and horizontal flips of training images")
    option("--max-shift", shift_pixels, "largest shift in pixels with --augment, 0-13")
    option("--flip", probability, "flip probability with --augment")
    option("--val-size", positive_int, "validation images held out of the 60k")
    option("--seed", non_negative_int, "seed of the one generator: split, init, shuffling, dropout")
    t.add_argument("--out", type=path_name, help="output directory (default: a new runs/<timestamp>/)")
    t.add_argument("--data-dir", type=path_name,
                   help="directory with the four Fashion-MNIST files (default: search, see README)")
    t.add_argument("--resume", type=Path, metavar="DIR_OR_CHECKPOINT",
                   help="continue an interrupted run from its directory or checkpoint.npz")
    t.add_argument("--quiet", action="store_true", help="no per-epoch progress")

    e = sub.add_parser("evaluate", help="test accuracy, loss and per-class report of a model file",
                       description="Evaluate a model file on the Fashion-MNIST test set.")
    e.add_argument("model", type=Path, help="a model.npz written by nnscratch, or a run's folder")
    e.add_argument("--data-dir", type=path_name,
                   help="directory with the Fashion-MNIST test files (t10k-*; the training "
                        "files are not needed) (default: search, see README)")
    e.add_argument("--confusion-matrix", type=png_path, metavar="PNG",
                   help="also write the confusion matrix here (a .png file name; an existing "
                        "file of that name is replaced)")
    e.add_argument("--json", action="store_true", help="print the results as JSON")

    p = sub.add_parser("predict", help="classify image files (PNG, JPEG, ...)",
                       description="Classify images of any size: each is converted to a 28x28 "
                       "grayscale image with a light item on a dark background, like Fashion-MNIST.")
    p.add_argument("model", type=Path, help="a model.npz written by nnscratch, or a run's folder")
    p.add_argument("images", type=Path, nargs="+", metavar="IMAGE",
                   help="image files, or folders of them (their image files, by name)")
    p.add_argument("--invert", choices=("auto", "yes", "no"), default="auto",
                   help="invert polarity: auto inverts images whose background is light "
                        "(default auto)")
    p.add_argument("--save-inputs", type=path_name, metavar="DIR",
                   help="also write the 28x28 image the model was given for each picture, "
                        "as DIR/<n>-<name>.png, to see what it saw")
    p.add_argument("--top", type=positive_int, default=None,
                   help="classes to show per image, at most the model's (default 3, or all "
                        "of a model with fewer)")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    return parser


def main(argv: Sequence[str] | None = None, *, program: bool = False) -> int:
    """The command line; ``argv`` defaults to ``sys.argv[1:]``. ``program`` is for
    the ``nnscratch`` program itself (its console script and ``python -m
    nnscratch.cli``): only then may a first run replace its process to compile
    its kernels first (``nnscratch.precompile``); a call from Python never does."""
    try:
        parser = build_parser()
        args, unknown = parser.parse_known_args(argv)
        command = parser.commands[args.command]
        args.program = program
        if args.command == "predict":  # images after an option (`M a.png --json b.png`)
            # (after "--" every word is an image, even one that starts with "-")
            cut = unknown.index("--") if "--" in unknown else len(unknown)
            args.images += [Path(u) for u in unknown[:cut] if not u.startswith("-")]
            args.images += [Path(u) for u in unknown[cut + 1:]]
            unknown = [u for u in unknown[:cut] if u.startswith("-")]
        if unknown:  # argparse would report these with the top-level usage
            command.error(f"unrecognized arguments: {' '.join(unknown)}")
        # SIGTERM stops like Ctrl-C (training installs its own checkpointing handler).
        previous = _sigterm_as_interrupt()
    except KeyboardInterrupt:
        return _interrupted()
    try:
        with warnings.catch_warnings():
            # A warning is one line for the user, not a source location.
            # (Library warnings start "nnscratch: " for Python users; the line already says so.)
            warnings.showwarning = lambda message, *_, **__: print(
                f"nnscratch {args.command}: warning: {str(message).removeprefix('nnscratch: ')}",
                file=sys.stderr)
            if args.command == "train":
                return cmd_train(args, command)
            if args.command == "evaluate":
                return cmd_evaluate(args, command)
            return cmd_predict(args, command)
    except BrokenPipeError as exc:  # the reader went away (`... | head`): stop quietly, like other tools
        if args.command == "train":  # but a stopped training run deserves a word
            kept = getattr(exc, "kept", None)
            print("nnscratch train: stopped: standard output was closed"
                  + (f"; {kept}" if kept else ""), file=sys.stderr)
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):  # stdout is not a real file (e.g. captured in tests)
            pass
        return 1
    except (CLIError, DataError, ModelFileError, OSError) as exc:
        print(f"nnscratch {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except MemoryError as exc:
        print(f"nnscratch {args.command}: error: not enough memory ({str(exc) or 'allocation failed'})"
              + ("; try a smaller --hidden or --batch-size" if args.command == "train" else ""),
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # outside training (which checkpoints): loading data, evaluating
        print(f"nnscratch {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        _restore_sigterm(previous)


# ---- train ---------------------------------------------------------------------------
def _refuse_unusable_file(parser: argparse.ArgumentParser, path: Path, option: str) -> None:
    """A usage error for an output file whose place cannot hold it."""
    if path.is_dir():
        parser.error(f"{option} {path}: is a directory, expected a file name")
    _refuse_file_in_the_way(parser, f"{option} {path}", path.absolute().parents)


def _refuse_file_in_the_way(parser: argparse.ArgumentParser, what: str,
                            places: Sequence[Path]) -> None:
    """A usage error if the first of ``places`` (a path, then its parents) that
    exists is not a directory."""
    existing = next(p for p in places if p.exists())
    if not existing.is_dir():
        parser.error(f"{what}: {existing} exists and is not a directory")


def _model_file(parser: argparse.ArgumentParser, path: Path) -> Path:
    """The model file ``path`` names: itself, or a run folder's model.npz."""
    if not path.exists():
        parser.error(f"model {path}: no such file")
    if path.is_dir():
        if not (path / "model.npz").is_file():
            parser.error(f"model {path}: is a folder without a model.npz (a run's folder "
                         "has one once its training finished)")
        return path / "model.npz"
    return path


def _resolve_config(args: argparse.Namespace, parser: argparse.ArgumentParser
                    ) -> tuple[dict[str, Any], Path, Path | None]:
    """The run's configuration, its output directory and, when resuming, the checkpoint."""
    given = {k: getattr(args, k) for k in TRAINING_OPTIONS if getattr(args, k) is not None}
    if args.resume is not None:
        if given:
            parser.error("--resume continues a run with its saved options; do not also give "
                         + ", ".join("--" + k.replace("_", "-") for k in given))
        ckpt = args.resume / "checkpoint.npz" if args.resume.is_dir() else args.resume
        if not ckpt.exists():
            parser.error(f"--resume {args.resume}: no checkpoint.npz there")
        if ckpt.name == "model.npz":
            parser.error(f"--resume {args.resume}: that is a trained model, not a checkpoint; "
                         f"give the run's folder or its checkpoint.npz")
        out = _place(args.out) if args.out is not None else ckpt.parent
        # Only a folder's own checkpoint.npz continues the run in that folder; any
        # other checkpoint must not write over a run it does not belong to.
        if out.resolve() != ckpt.parent.resolve() or ckpt.name != "checkpoint.npz":
            _refuse_unusable_out(parser, out, resuming=args.resume if args.out is None else None)
        return {}, out, ckpt
    if not args.augment and ("max_shift" in given or "flip" in given):
        parser.error("--max-shift and --flip shape the augmentation: add --augment to use them")
    config = dict(DEFAULTS, **given)
    if config["schedule"] == "constant" and "warmup_epochs" in given:
        parser.error("--warmup-epochs shapes the cosine schedule: it has no effect with "
                     "--schedule constant")
    if config["val_size"] >= 60000:
        parser.error("--val-size must leave training images: use fewer than 60000")
    if config["batch_size"] > 60000 - config["val_size"]:
        parser.error(f"--batch-size {config['batch_size']} is more than the "
                     f"{60000 - config['val_size']} training images (60000 minus --val-size)")
    # (Asked for; the default one epoch is simply cut short by a shorter run.)
    if "warmup_epochs" in given and config["warmup_epochs"] >= config["epochs"]:
        parser.error(f"--warmup-epochs {config['warmup_epochs']:g} is not less than --epochs "
                     f"{config['epochs']}: the learning rate would never decay; use fewer "
                     "warm-up epochs")
    widths = [28 * 28, *config["hidden"], len(CLASS_NAMES)]
    n_params = sum((a + 1) * b for a, b in zip(widths, widths[1:]))
    if n_params > MAX_PARAMETERS:
        parser.error(f"--hidden {' '.join(map(str, config['hidden']))} makes {n_params:,} "
                     f"parameters; a model file holds at most {MAX_PARAMETERS:,}")
    out = _place(args.out) if args.out is not None else _default_out()
    _refuse_unusable_out(parser, out)
    return config, out, None


def _default_out(taken: Path | None = None) -> Path:
    """runs/<date-time>, with _2, _3, ... when that name is taken (runs started in
    the same second); ``taken``: a name just found taken, so a later one is wanted.
    (lexists: a broken symbolic link takes a name too.)"""
    stamp = taken.name.split("_")[0] if taken is not None else time.strftime("%Y%m%d-%H%M%S")
    out, n = Path("runs") / stamp, 2
    while os.path.lexists(out) or out == taken:
        out, n = Path("runs") / f"{stamp}_{n}", n + 1
    return out


def _place(path: Path) -> Path:
    """The place ``path`` names, as it must be checked, created and cleaned up: "a/b/.."
    is "a" (else a run would create "a/b" and clean up nothing). With "..", the
    real path, since "link/.." is the parent of wherever the link points."""
    if ".." in path.parts:
        return Path(os.path.realpath(path))
    return Path(os.path.normpath(path))


def _refuse_unusable_out(parser: argparse.ArgumentParser, out: Path,
                         resuming: Path | None = None) -> None:
    """A usage error for an --out below a file or holding another run (never
    overwritten). ``resuming``: the checkpoint of a --resume with no --out, which
    would write into ``out``, its own folder."""
    what = f"--out {out}" if resuming is None else \
        f"{out} (where --resume {resuming} would write, given no --out)"
    _refuse_file_in_the_way(parser, what, [out, *out.absolute().parents])
    if out.is_dir() and (out / "model.npz").exists():
        parser.error(f"{what} already holds a finished run (its model.npz); "
                     "choose another --out")
    if out.is_dir() and (out / "checkpoint.npz").exists():
        if resuming is not None:
            parser.error(f"{what} holds another run's checkpoint.npz; give --out for a new folder")
        parser.error(f"{what} already holds an unfinished run; continue it with --resume {out} "
                     "or choose another --out")
    # A run writes these names; files of the same names are never overwritten.
    taken = [n for n in RUN_FILES if (out / n).is_file()]
    if taken:
        parser.error(f"{what} already has {', '.join(taken)}, which a run would "
                     "overwrite; choose another --out (or move them)")
    in_the_way = [n for n in RUN_FILES if (out / n).is_dir()]
    if in_the_way:
        parser.error(f"{what}: {', '.join(in_the_way)} would be written there but "
                     f"{'is a directory' if len(in_the_way) == 1 else 'are directories'}")


RUN_FILES = ("model.npz", "metrics.json", "checkpoint.npz", "confusion_matrix.png",
             "training_curves.png", "misclassified.png")


def _make_out_dir(out: Path, option: str = "--out", *, fresh: bool = False) -> list[Path]:
    """Create ``out`` (and missing parents) before any long work, so that an
    unusable place fails at once; returns the directories this created. With
    ``fresh``, FileExistsError if ``out`` exists (another process made it first)."""
    created = [p for p in (out, *out.absolute().parents) if not p.exists()][::-1]
    try:
        out.mkdir(parents=True, exist_ok=not fresh)
        with tempfile.TemporaryFile(dir=out):  # a nameless file: proves writes work there
            pass
    except OSError as exc:
        if fresh and isinstance(exc, FileExistsError):
            raise
        _remove_if_empty(created)
        raise CLIError(f"{option} {out}: cannot write there ({exc.strerror or exc})") from None
    return created


def _remove_if_empty(created: list[Path]) -> None:
    """Remove the directories ``_make_out_dir`` created if nothing was written in them."""
    for path in reversed(created):
        try:
            path.rmdir()  # only ever removes an empty directory
        except OSError:
            return


# How each saved option is checked when a run is resumed (the same rules as the
# command line's argument types).
CONFIG_CHECKS = {
    "epochs": positive_int, "batch_size": positive_int, "dropout": drop_probability,
    "lr": positive_float, "weight_decay": non_negative_float, "warmup_epochs": non_negative_float,
    "max_shift": shift_pixels, "flip": probability, "val_size": positive_int,
    "seed": non_negative_int,
}


def _config_problems(config: dict[str, Any]) -> list[str]:
    """What is wrong with a configuration read back from a checkpoint."""
    problems = [f"{k} is missing" for k in TRAINING_OPTIONS if k not in config]
    for key, check in CONFIG_CHECKS.items():
        if key not in config:
            continue
        value = config[key]
        kinds = int if check in (positive_int, non_negative_int, shift_pixels) else (int, float)
        try:
            if isinstance(value, bool) or not isinstance(value, kinds):
                raise ValueError
            check(str(value))
        except ValueError:
            problems.append(f"{key} must be a {check.__name__}, got {value!r}")
    hidden = config.get("hidden")
    if not isinstance(hidden, list) or not hidden or not all(
            isinstance(h, int) and not isinstance(h, bool) and h >= 1 for h in hidden):
        problems.append(f"hidden must be a list of positive integers, got {hidden!r}")
    if config.get("schedule") not in ("constant", "cosine"):
        problems.append(f"schedule must be 'constant' or 'cosine', got {config.get('schedule')!r}")
    if not isinstance(config.get("augment"), bool):
        problems.append(f"augment must be true or false, got {config.get('augment')!r}")
    if isinstance(config.get("val_size"), int) and config["val_size"] >= 60000:
        problems.append("val_size must leave training images (< 60000)")
    return problems


def _config_mismatches(config: dict[str, Any], meta: dict[str, Any], model: Sequential,
                       trainer: Trainer) -> list[str]:
    """Where a checkpoint's configuration disagrees with the state saved beside it.
    (The trainer checks the rest: batch_size against the step count, seed and
    val_size against the training samples' digest.)"""
    problems = []
    if meta.get("architecture") != json.loads(json.dumps(model.config())):
        problems.append("hidden or dropout differ from the saved model's layers")
    saved = meta.get("optimizer", {})
    for key, option in (("initial_lr", "lr"), ("weight_decay", "weight_decay")):
        # (initial_lr is absent from checkpoints older than it: nothing to compare.)
        if key in saved and saved[key] != config[option]:
            problems.append(f"{option} is {config[option]!r}, the saved optimizer's "
                            f"{saved.get(key)!r}")
    step, first = saved.get("step"), meta.get("first_step", 0)
    steps = step - first if is_int(step) and is_int(first) else None  # (else the trainer says)
    if not problems and is_number(saved.get("lr")) and steps is not None and (
            1 <= steps <= trainer.epochs * trainer.steps_per_epoch):
        expected = trainer.schedule(steps)  # the rate the last step took
        if not math.isclose(saved["lr"], expected, rel_tol=1e-9, abs_tol=1e-15):
            problems.append(f"the last step's learning rate {saved['lr']!r} is not what "
                            f"schedule, warmup_epochs, epochs and lr give ({expected!r})")
    return problems


def build_mlp(hidden: list[int], dropout: float, rng: np.random.Generator) -> Sequential:
    """Flatten -> [Dense -> ReLU -> Dropout] per hidden size -> Dense(10)."""
    layers: list[Any] = [Flatten()]
    width = 28 * 28
    for units in hidden:
        layers += [Dense(width, units), ReLU()] + ([Dropout(dropout)] if dropout > 0 else [])
        width = units
    layers.append(Dense(width, len(CLASS_NAMES)))
    return Sequential(*layers, seed=rng)


def split_train_val(x: np.ndarray, y: np.ndarray, val_size: int, rng: np.random.Generator):
    """A seeded split of the training set into (train, validation); uint8 stays uint8."""
    perm = rng.permutation(len(x))
    val, train = np.sort(perm[:val_size]), np.sort(perm[val_size:])
    return (x[train], y[train]), (x[val], y[val])


class _StopOnSignal:
    """While active, SIGINT/SIGTERM ask the trainer to stop after the current step
    (the threaded step's current call: ~50 ms of steps) (a second signal stops at
    once, without a checkpoint of that step)."""

    def __init__(self, trainer: Trainer) -> None:
        self.trainer = trainer
        self.previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.trainer.stop_requested:
            raise KeyboardInterrupt
        self.trainer.stop_requested = True
        print(f"\n{signal.Signals(signum).name}: stopping after the current step and saving a "
              "checkpoint (again to stop at once)...", file=sys.stderr, flush=True)

    def __enter__(self) -> _StopOnSignal:
        if threading.current_thread() is not threading.main_thread():
            return self  # only the main thread may set handlers: signals keep their defaults
        for sig in (signal.SIGINT, signal.SIGTERM):
            if signal.getsignal(sig) is signal.SIG_IGN:
                continue  # e.g. SIGINT of a background job: ignored before us, ignored by us
            self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def cmd_train(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    config, out, ckpt = _resolve_config(args, parser)
    if args.program and ckpt is None:
        _compile_first(config, out, args.data_dir)  # returns unless it restarts this command
    created = None
    while created is None:
        try:  # the default folder is made new: a run started in the same second takes the next
            created = _make_out_dir(out, fresh=args.out is None and ckpt is None)
        except FileExistsError as exc:
            if not os.path.lexists(out):  # not the name itself: "runs" is a file or a broken link
                what = (f"{exc.filename} is a symbolic link to nothing"
                        if os.path.islink(exc.filename) and not os.path.exists(exc.filename)
                        else f"{exc.filename} exists and is not a directory")
                raise CLIError(f"--out {out}: cannot write there ({what})") from None
            out = _default_out(taken=out)
    lock = None
    try:
        lock = _lock_out_dir(out)
        if lock is not None:  # only while no other run can be writing there
            remove_stale_temporaries(out, RUN_FILES)
        return _train(args, config, out, ckpt)
    finally:
        if lock is not None:
            os.close(lock)
        # A run that failed before writing anything (bad data, divergence in the
        # first epoch) leaves no empty directory behind.
        _remove_if_empty(created)


def _lock_out_dir(out: Path) -> int | None:
    """Hold an exclusive lock on ``out`` for the whole run, so a second
    ``nnscratch train`` into the same folder fails at once instead of both
    writing there. The lock goes with the process, however it ends."""
    try:
        import fcntl
    except ImportError:  # not on this platform: no lock
        return None
    try:
        fd = os.open(out, os.O_RDONLY)
    except OSError:
        return None  # a folder we can write but not open: run without the lock
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise CLIError(f"--out {out}: another nnscratch train is writing there; wait for "
                           "it to finish or choose another --out") from None
        return None  # a filesystem without locks (e.g. some NFS mounts): run without it
    return fd


def _make_run(config: dict[str, Any], rng: np.random.Generator, train: tuple, val: tuple,
              verbose: int, on_epoch_end: Any = None) -> tuple[Sequential, Adam, Trainer]:
    """The model, optimizer and trainer of a run of ``config`` (``rehearse`` uses it too)."""
    model = build_mlp(config["hidden"], config["dropout"], rng)
    optimizer = Adam(model.parameters(), lr=config["lr"], weight_decay=config["weight_decay"])
    trainer = Trainer(model, *train, optimizer=optimizer, epochs=config["epochs"],
                      batch_size=config["batch_size"], validation_data=val,
                      lr_schedule=config["schedule"], warmup_epochs=config["warmup_epochs"],
                      restore_best=True, verbose=verbose,
                      augment=RandomShiftFlip(config["max_shift"], config["flip"])
                      if config["augment"] else None, on_epoch_end=on_epoch_end)
    return model, optimizer, trainer


def rehearse(config: dict[str, Any]) -> None:
    """A one-epoch run of ``config``'s model on a few blank images, then evaluation
    and prediction, through the calls ``_train`` makes with arrays of the same
    types: this compiles (into Numba's cache) every kernel the real run calls.
    ``nnscratch.precompile`` runs it before a first run; see there why."""
    n = config["batch_size"] + 1  # a full batch and a short one
    x, y = np.zeros((n, 28, 28), np.uint8), np.zeros(n, np.uint8)  # as load_fashion_mnist gives
    model, _, trainer = _make_run(dict(config, epochs=1), np.random.default_rng(0), (x, y),
                                  (x, y), verbose=0)
    trainer.run()
    model.evaluate(x, y)
    x.flags.writeable = False  # the test images are read-only (memory-mapped): other types
    model.evaluate(x, y)
    model.predict(x)


def _compile_first(config: dict[str, Any], out: Path, data_dir: Path | None) -> None:
    """When Numba's cache lacks the run's kernels, have them compiled first in a
    process image of their own, which then starts this command again (see
    nnscratch.precompile): the training process never holds a compile's memory.
    Returns when nothing needs compiling, when this is that second start, or
    when the exec failed (with a warning; the run then compiles them itself)."""
    from . import precompile, threaded
    if os.environ.pop(precompile.STARTED_AGAIN, None) is not None or os.name != "posix" \
            or not threaded.expected(config["augment"]) \
            or precompile.step_cached(len(config["hidden"]) + 1) is not False:
        return
    # What would fail at once must still fail at once, not after the compile: the
    # output folder (probed, then left as it was) and the data (loaded, so missing
    # data is downloaded and damaged data refused now; the exec frees it all; its
    # warnings are left to the run).
    created = _make_out_dir(out)
    try:
        lock = _lock_out_dir(out)
        if lock is not None:
            os.close(lock)
    finally:
        _remove_if_empty(created)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        load_fashion_mnist(data_dir)
    if not threaded.pool_wakes_fast():
        return  # a slow-waking pool: the run never takes the threaded step
    error = precompile.compile_then_restart(config, [sys.executable, *sys.orig_argv[1:]])
    warnings.warn(f"could not compile the kernels first ({error}); compiling them in this run",
                  stacklevel=2)


def _what_is_kept(checkpoint_path: Path, out: Path) -> str:
    return (f"the checkpoint of the last finished epoch is {checkpoint_path}.\n"
            f"Resume with: nnscratch train --resume {out}" if checkpoint_path.exists()
            else "no epoch had finished, so there is no checkpoint to resume from.")


def _stopped_at_once(checkpoint_path: Path, out: Path) -> None:
    print(f"Stopped at once; {_what_is_kept(checkpoint_path, out)}", file=sys.stderr)


def _train(args: argparse.Namespace, config: dict[str, Any], out: Path, ckpt: Path | None) -> int:
    meta = None
    if ckpt is not None:
        config, meta = load_checkpoint(ckpt)
        problems = _config_problems(config)
        if problems:
            raise CLIError(f"{ckpt}: invalid saved configuration: {'; '.join(problems)}")
    (x_full, y_full), (x_test, y_test) = load_fashion_mnist(args.data_dir)
    rng = np.random.default_rng(config["seed"])
    (x_train, y_train), (x_val, y_val) = split_train_val(x_full, y_full, config["val_size"], rng)
    # The split copied what training needs; dropping the memory-mapped originals
    # unmaps them, which keeps the run's peak memory ~50 MB lower.
    del x_full, y_full
    checkpoint_path = out / "checkpoint.npz"

    def on_epoch_end(trainer: Trainer) -> None:
        save_checkpoint(checkpoint_path, trainer, config)

    model, optimizer, trainer = _make_run(config, rng, (x_train, y_train), (x_val, y_val),
                                          verbose=0 if args.quiet else 1,
                                          on_epoch_end=on_epoch_end)
    if meta is not None:
        problems = _config_mismatches(config, meta, model, trainer)
        if problems:
            raise CLIError(f"{ckpt}: its saved configuration does not match its saved state "
                           f"(edited by hand?): {'; '.join(problems)}")
        try:
            trainer.load_state_dict(meta["trainer_state"])
        except (ValueError, TypeError, KeyError) as exc:
            raise CLIError(f"{ckpt}: does not fit this run ({exc})") from None
        where = ("the end of training" if trainer.epoch >= trainer.epochs else
                 f"the validation of epoch {trainer.epoch + 1}"
                 if trainer.batch >= trainer.steps_per_epoch else
                 f"epoch {trainer.epoch + 1}, step {trainer.batch + 1}")
        print(f"Resuming {ckpt} at {where}", flush=True)
    else:
        print(f"Training {' -> '.join(str(n) for n in [784, *config['hidden'], 10])} MLP on "
              f"{len(x_train)} images ({len(x_val)} held out for validation); writing to {out}",
              flush=True)
    training_started = time.perf_counter()
    try:
        with _StopOnSignal(trainer):
            history = trainer.run()
    except TrainingInterrupted:
        try:
            save_checkpoint(checkpoint_path, trainer, config)
        except KeyboardInterrupt:  # a second signal while saving: the write is atomic
            _stopped_at_once(checkpoint_path, out)
            return 130
        except OSError as exc:
            kept = (f"the checkpoint of the last finished epoch, {checkpoint_path}, is intact: "
                    f"resume with nnscratch train --resume {out}" if checkpoint_path.exists()
                    else "no earlier checkpoint exists")
            raise CLIError(f"interrupted, and saving the checkpoint failed ({exc}); {kept}") from None
        where = (f"the training steps of epoch {trainer.epoch + 1} (its validation had not run)"
                 if trainer.batch >= trainer.steps_per_epoch else
                 f"{trainer.epoch} full epochs and {trainer.batch} steps")
        print(f"Interrupted after {where}; checkpoint saved "
              f"to {checkpoint_path}.\nResume with: nnscratch train --resume {out}",
              file=sys.stderr)
        return 130
    except KeyboardInterrupt:  # a second signal: stopped at once, without saving this step
        _stopped_at_once(checkpoint_path, out)
        return 130
    except BrokenPipeError as exc:  # stdout closed (`| head`): main() says so, with this
        exc.kept = _what_is_kept(checkpoint_path, out)
        raise
    except TrainingDiverged as exc:
        kept = f" The last good checkpoint is {checkpoint_path}." if checkpoint_path.exists() else ""
        raise CLIError(f"training diverged: {exc}{kept}") from None
    train_seconds = time.perf_counter() - training_started
    previous = _sigterm_as_interrupt()
    try:
        # Epoch times accumulate across interruptions; the other two are this process's.
        timings = {"train_seconds": sum(history["epoch_time"]),
                   "epoch_seconds": history["epoch_time"],
                   "this_process_training_seconds": train_seconds,
                   "first_batch_unix_time": trainer.first_step_done}
        best_epoch = trainer.best["epoch"] if trainer.best else None
        # Free what training alone needed (Adam's moments, the best-epoch copy of the
        # weights) and each image set once it is evaluated, before matplotlib loads:
        # this keeps the run's peak memory down.
        del trainer, optimizer
        results = {"train": model.evaluate(x_train, y_train)}
        del x_train, y_train
        results["validation"] = model.evaluate(x_val, y_val)
        del x_val, y_val
        results["test"] = model.evaluate(x_test, y_test)
        _finish_run(model, config, history, results, timings, best_epoch, out, (x_test, y_test))
    except KeyboardInterrupt:
        print(f"Interrupted while writing the results; training is complete and saved in "
              f"{checkpoint_path}.\nWrite the results with: nnscratch train --resume {out}",
              file=sys.stderr)
        return 130
    except BrokenPipeError:  # stdout closed (`| head`): main() stops quietly
        raise
    except OSError as exc:  # e.g. a full disk: the trained model is safe in the checkpoint
        raise CLIError(f"writing the results failed ({exc}); training is complete and saved in "
                       f"{checkpoint_path}: make room, then write them with "
                       f"nnscratch train --resume {out}") from None
    finally:
        _restore_sigterm(previous)
    return 0


def _raise_keyboard_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _sigterm_as_interrupt() -> Any:
    """Make SIGTERM raise KeyboardInterrupt; returns the handler to put back, or
    None if nothing changed: only the main thread may set handlers, and a
    SIGTERM ignored before we started stays ignored."""
    if threading.current_thread() is not threading.main_thread() \
            or signal.getsignal(signal.SIGTERM) is signal.SIG_IGN:
        return None
    return signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)


def _restore_sigterm(previous: Any) -> None:
    if previous is not None:  # (None also stands for a handler set outside Python)
        signal.signal(signal.SIGTERM, previous)


def _finish_run(model: Sequential, config: dict[str, Any], history: dict[str, list[float]],
                results: dict[str, dict[str, float]], timings: dict[str, Any],
                best_epoch: int | None, out: Path, test: tuple) -> None:
    from . import kernels, plots
    from .metrics import classification_report, confusion_matrix, format_report

    probs = model.predict(test[0])
    pred = probs.argmax(axis=1)
    cm = confusion_matrix(test[1], pred, len(CLASS_NAMES))
    report = classification_report(test[1], pred, list(CLASS_NAMES))
    save(model, out / "model.npz", class_names=list(CLASS_NAMES))
    metrics = {
        "test": results["test"], "train": results["train"], "validation": results["validation"],
        "best_epoch": best_epoch,
        "epochs": config["epochs"], "per_class": report, "confusion_matrix": cm.tolist(),
        "class_names": list(CLASS_NAMES), "history": history,
        "timings": timings,
        "config": config,
        # The installed Numba's version, read without importing it: with
        # NNSCRATCH_BACKEND=numpy the run never loads Numba at all.
        "versions": {"nnscratch": __version__, "python": platform.python_version(),
                     "numpy": np.__version__, "numba": _installed_version("numba")},
        "backend": kernels.BACKEND,
        "machine": {"processor": platform.processor() or platform.machine(),
                    "cpus": os.cpu_count()},
    }
    _write_json(out / "metrics.json", metrics)
    plots.plot_confusion_matrix(cm, list(CLASS_NAMES), out / "confusion_matrix.png",
                                title=f"Fashion-MNIST test set: accuracy {results['test']['accuracy']:.2%}")
    plots.plot_training_curves(history, out / "training_curves.png")
    plots.plot_misclassified(test[0], test[1], pred, list(CLASS_NAMES), out / "misclassified.png",
                             probs=probs.max(axis=1))
    print(format_report(report))
    print(f"test accuracy {results['test']['accuracy']:.4f}, loss {results['test']['loss']:.4f} "
          f"(train {results['train']['accuracy']:.4f}, validation "
          f"{results['validation']['accuracy']:.4f}, best epoch {best_epoch}); "
          f"trained in {timings['train_seconds']:.1f} s")
    for name in ("model.npz", "metrics.json", "confusion_matrix.png", "training_curves.png",
                 "misclassified.png"):
        print(f"wrote {out / name}")


def _installed_version(package: str) -> str | None:
    """A package's installed version, read from its metadata without importing it."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def _write_json(path: Path, data: Any) -> None:
    text = json.dumps(data, indent=2) + "\n"
    atomic_write(path, lambda handle: handle.write(text.encode()))


# ---- evaluate ------------------------------------------------------------------------
def cmd_evaluate(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    args.model = _model_file(parser, args.model)
    created: list[Path] = []
    if args.confusion_matrix is not None:
        args.confusion_matrix = _place(args.confusion_matrix)
        _refuse_unusable_file(parser, args.confusion_matrix, "--confusion-matrix")
        created = _make_out_dir(args.confusion_matrix.parent, "--confusion-matrix")
    try:
        return _evaluate(args)
    finally:
        _remove_if_empty(created)


def _evaluate(args: argparse.Namespace) -> int:
    from .metrics import classification_report, confusion_matrix, format_report

    model = load(args.model)
    x_test, y_test = load_fashion_mnist_split("test", args.data_dir)
    if model.in_features != 784 or model.num_classes != len(CLASS_NAMES):
        raise CLIError(f"{args.model}: the model takes {model.in_features} inputs and gives "
                       f"{model.num_classes} classes; Fashion-MNIST needs 784 and 10")
    result = model.evaluate(x_test, y_test)
    pred = model.predict(x_test).argmax(axis=1)
    cm = confusion_matrix(y_test, pred, len(CLASS_NAMES))
    report = classification_report(y_test, pred, list(CLASS_NAMES))
    if args.confusion_matrix is not None:
        from . import plots
        plots.plot_confusion_matrix(cm, list(CLASS_NAMES), args.confusion_matrix,
                                    title=f"{args.model}: test accuracy {result['accuracy']:.2%}")
    if args.json:
        print(json.dumps({"model": str(args.model), **result, "per_class": report,
                          "confusion_matrix": cm.tolist()}, indent=2))
    else:
        print(format_report(report))
        print(f"test accuracy {result['accuracy']:.4f}, loss {result['loss']:.4f} "
              f"({len(y_test)} images)")
        if args.confusion_matrix is not None:
            print(f"wrote {args.confusion_matrix}")
    return 0


# ---- predict -------------------------------------------------------------------------
def cmd_predict(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    args.model = _model_file(parser, args.model)
    if args.save_inputs is not None:
        args.save_inputs = _place(args.save_inputs)
        _refuse_file_in_the_way(parser, f"--save-inputs {args.save_inputs}",
                                [args.save_inputs, *args.save_inputs.absolute().parents])
        if args.save_inputs.is_dir() and any(args.save_inputs.iterdir()):
            parser.error(f"--save-inputs {args.save_inputs}: not empty; give a new or empty "
                         "folder (its files are never overwritten or mixed with new ones)")
    model = load(args.model)
    if model.in_features != 784:
        raise CLIError(f"{args.model}: the model takes {model.in_features} inputs, not 28x28 images")
    if args.top is None:
        args.top = min(3, model.num_classes)
    elif args.top > model.num_classes:
        parser.error(f"--top {args.top}: {args.model} knows only {model.num_classes} classes")
    created = ([] if args.save_inputs is None
               else _make_out_dir(args.save_inputs, "--save-inputs"))
    try:
        return _predict(args, model)
    finally:
        _remove_if_empty(created)  # nothing saved (every image failed): no empty folder left


def _predict(args: argparse.Namespace, model: Sequential) -> int:
    names = class_names_of(model)
    results, failed = [], 0
    for n, (path, problem) in enumerate(_image_files(args.images), start=1):
        try:
            if problem is not None:
                raise ImageError(problem)
            image = load_image(path, args.invert)
        except ImageError as exc:
            failed += 1
            results.append({"file": str(path), "error": str(exc)})
            if not args.json:
                print(f"nnscratch predict: error: {exc}", file=sys.stderr)
            continue
        seen = None
        if args.save_inputs is not None:
            from PIL import Image
            seen = args.save_inputs / f"{n}-{path.stem or 'image'}.png"
            atomic_write(seen, lambda f, image=image: Image.fromarray(image).save(f, "PNG"))
        probs = model.predict(image[None])[0]
        top = np.argsort(probs)[::-1][:args.top]
        results.append({"file": str(path), "predictions": [
            {"class": names[k], "index": int(k), "probability": float(probs[k])} for k in top]})
        if seen is not None:
            results[-1]["input_image"] = str(seen)
        if looks_blank(image):
            warning = "the image looks blank (no item stands out from the background)"
            results[-1]["warning"] = warning
            if not args.json:
                print(f"nnscratch predict: warning: {path}: {warning}", file=sys.stderr)
        if not args.json:
            print(f"{path}: " + ", ".join(f"{names[k]} {probs[k]:.3f}" for k in top))
    if args.json:
        print(json.dumps(results, indent=2))
    return 1 if failed else 0


# What a folder given to predict is searched for: the usual picture formats
# (Pillow also registers formats it cannot read without other software, or only
# writes, such as .eps and .pdf).
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".gif", ".bmp", ".dib", ".tif",
                    ".tiff", ".webp", ".ppm", ".pgm", ".pbm", ".pnm", ".tga", ".ico")


def _image_files(paths: Sequence[Path]) -> list[tuple[Path, str | None]]:
    """``paths`` with each folder replaced by its image files (IMAGE_EXTENSIONS, not
    hidden), sorted by name, each paired with None; a folder with none (or that
    cannot be listed) stays, paired with the problem to report."""
    files: list[tuple[Path, str | None]] = []
    for path in paths:
        if not path.is_dir():
            files.append((path, None))
            continue
        try:
            found = sorted(p for p in path.iterdir()
                           if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")
                           and not p.is_dir())
        except OSError as exc:
            found, why = [], f"cannot list it ({exc.strerror or exc})"
        else:
            why = "a folder with no image files in it"
        # (a broken link is kept: reading it says so, where skipping it would not)
        files += [(p, None) for p in found] or [(path, f"{path}: {why}")]
    return files


if __name__ == "__main__":
    sys.exit(main(program=True))
