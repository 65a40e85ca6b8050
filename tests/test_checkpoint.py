"""Checkpoints: stop a Trainer anywhere, save, load into fresh objects, resume,
and end bit-identical to a run that was never interrupted."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from nnscratch import Adam, Dense, Dropout, Flatten, ReLU, Sequential, Trainer, TrainingInterrupted
from nnscratch.augment import RandomShiftFlip
from nnscratch.checkpoint import load_checkpoint, save_checkpoint
from nnscratch.io import ModelFileError, load, save
from nnscratch.threaded import StoreChooser

try:
    from . import helpers  # when tests/ is a package
except ImportError:
    import helpers

N_TRAIN, BATCH, EPOCHS = 100, 16, 3
STEPS = -(-N_TRAIN // BATCH)     # 7 steps per epoch, the last one of 4 samples
SIDE = 6


def data():
    rng = np.random.default_rng(7)
    x = rng.integers(0, 256, (N_TRAIN, SIDE, SIDE), dtype=np.uint8)
    y = rng.integers(0, 3, N_TRAIN)
    vx = rng.integers(0, 256, (30, SIDE, SIDE), dtype=np.uint8)
    vy = rng.integers(0, 3, 30)
    return x, y, vx, vy


X, Y, VX, VY = data()


def make_config(**changes: Any) -> dict[str, Any]:
    config = {"seed": 3, "lr": 0.01, "dropout": 0.3, "augment": False, "epochs": EPOCHS,
              "batch_size": BATCH, "dtype": "float32", "weight_decay": 0.01,
              "schedule": "cosine", "warmup_epochs": 1.0}
    config.update(changes)
    return config


@pytest.fixture(autouse=True)
def calls_of_several_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    """One timed trial step of each store kind instead of four, so that even these
    short runs take calls of several threaded steps (from their third step on)."""
    monkeypatch.setattr(StoreChooser, "TRIAL", 1)


class StoppingTrainer(Trainer):
    """Requests a stop after step ``stop_at_step`` of this run or at the end of
    epoch ``stop_at_epoch_end`` (1-based), the way a signal handler would. (The
    threaded step takes several steps per call and sees a stop between calls, so
    its calls are cut to end there: every step is a place to resume from.)"""

    stop_at_step: int | None = None
    stop_at_epoch_end: int | None = None

    def _steps_to_stop(self) -> int | None:
        if self.stop_at_step is None:
            return None
        return self.stop_at_step - (self.optimizer.step_count - self.first_step)

    def _next_call_size(self) -> int:
        count = super()._next_call_size()
        left = self._steps_to_stop()
        return min(count, left) if left is not None and left > 0 else count

    def _count_step(self, loss: float, rows: int) -> None:
        super()._count_step(loss, rows)
        if self._steps_to_stop() == 0:
            self.stop_requested = True


def build(config: dict[str, Any], stop: tuple[str, int] | None = None) -> StoppingTrainer:
    rng = np.random.default_rng(config["seed"])
    layers: list[Any] = [Flatten(), Dense(SIDE * SIDE, 12), ReLU()]
    if config["dropout"]:
        layers.append(Dropout(config["dropout"]))
    layers.append(Dense(12, 3))
    model = Sequential(*layers, seed=rng, dtype=config["dtype"])
    optimizer = Adam(model.parameters(), lr=config["lr"], weight_decay=config["weight_decay"])
    if config.get("earlier_fit_epochs"):  # the optimizer arrives with steps already taken
        model.fit(X, Y, optimizer=optimizer, epochs=config["earlier_fit_epochs"],
                  batch_size=config["batch_size"], verbose=0)

    def on_epoch_end(trainer: StoppingTrainer) -> None:
        if trainer.epoch == trainer.stop_at_epoch_end:
            trainer.stop_requested = True

    trainer = StoppingTrainer(
        model, X, Y, optimizer=optimizer, epochs=config["epochs"], batch_size=config["batch_size"],
        validation_data=(VX, VY), lr_schedule=config["schedule"],
        warmup_epochs=config["warmup_epochs"], restore_best=True, verbose=0,
        augment=RandomShiftFlip(1, 0.5) if config["augment"] else None, on_epoch_end=on_epoch_end)
    set_stop(trainer, stop)
    return trainer


def set_stop(trainer: StoppingTrainer, stop: tuple[str, int] | None) -> None:
    trainer.stop_at_step = stop[1] if stop and stop[0] == "step" else None
    trainer.stop_at_epoch_end = stop[1] if stop and stop[0] == "epoch_end" else None


def final_state(trainer: Trainer) -> dict[str, Any]:
    state = trainer.state_dict()
    state["history"] = {k: v for k, v in state["history"].items() if k != "epoch_time"}
    state["epoch_times"] = len(trainer.history["epoch_time"])
    state.pop("elapsed")
    return state


def assert_same_state(a: dict[str, Any], b: dict[str, Any]) -> None:
    helpers.assert_same_arrays(a["model"], b["model"], "model")
    helpers.assert_same_arrays(a["optimizer"]["m"], b["optimizer"]["m"], "Adam m")
    helpers.assert_same_arrays(a["optimizer"]["v"], b["optimizer"]["v"], "Adam v")
    for key in ("lr", "betas", "eps", "weight_decay", "step"):
        assert a["optimizer"][key] == b["optimizer"][key], key
    assert (a["best"] is None) == (b["best"] is None)
    if a["best"] is not None:
        helpers.assert_same_arrays(a["best"]["weights"], b["best"]["weights"], "best weights")
        assert {k: v for k, v in a["best"].items() if k != "weights"} == \
            {k: v for k, v in b["best"].items() if k != "weights"}
    assert np.array_equal(a["perm"], b["perm"])
    assert a["history"] == b["history"]
    for key in ("epoch", "batch", "first_step", "loss_sum", "correct", "seen", "rng_state",
                "epoch_times"):
        assert a[key] == b[key], key


_REFERENCE: dict[str, dict[str, Any]] = {}


def uninterrupted(config: dict[str, Any]) -> dict[str, Any]:
    key = json.dumps(config, sort_keys=True)
    if key not in _REFERENCE:
        trainer = build(config)
        trainer.run()
        _REFERENCE[key] = final_state(trainer)
    return _REFERENCE[key]


def run_with_interruptions(config: dict[str, Any], stops: list[tuple[str, int]],
                           path: Path) -> tuple[Trainer, list[dict[str, Any]]]:
    """Train, stopping at each of ``stops`` in turn; each time save a checkpoint,
    read it back and continue in freshly built objects."""
    trainer = build(config, stops[0])
    seen = []
    for i in range(len(stops)):
        with pytest.raises(TrainingInterrupted):
            trainer.run()
        save_checkpoint(path, trainer, config)
        saved_config, meta = load_checkpoint(path)
        assert saved_config == config
        seen.append({"epoch": meta["epoch"], "batch": meta["batch"]})
        before = trainer.state_dict()
        trainer = build(saved_config, stops[i + 1] if i + 1 < len(stops) else None)
        trainer.load_state_dict(meta["trainer_state"])
        restored = trainer.state_dict()
        for state in (before, restored):
            state.pop("elapsed")
            state["epoch_times"] = 0
        assert_same_state(restored, before)
    trainer.run()
    return trainer, seen


STOP_POINTS = {
    "step 1": ([("step", 1)], [(0, 1)]),
    "mid first epoch": ([("step", 4)], [(0, 4)]),
    "last step of first epoch": ([("step", STEPS)], [(0, STEPS)]),
    "epoch boundary": ([("epoch_end", 1)], [(1, 0)]),
    "first step of second epoch": ([("step", STEPS + 1)], [(1, 1)]),
    "last step of second epoch": ([("step", 2 * STEPS)], [(1, STEPS)]),
    "very last step": ([("step", EPOCHS * STEPS)], [(2, STEPS)]),
    "after the last epoch": ([("epoch_end", EPOCHS)], [(EPOCHS, 0)]),
    "three interruptions": ([("step", 2), ("epoch_end", 1), ("step", 2 * STEPS + 3)],
                            [(0, 2), (1, 0), (2, 3)]),
}


@pytest.mark.parametrize("point", list(STOP_POINTS))
def test_resume_is_bit_identical(tmp_path: Path, point: str) -> None:
    stops, positions = STOP_POINTS[point]
    config = make_config()
    trainer, seen = run_with_interruptions(config, stops, tmp_path / "checkpoint.npz")
    assert [(s["epoch"], s["batch"]) for s in seen] == positions
    assert_same_state(final_state(trainer), uninterrupted(config))


@pytest.mark.parametrize("augment,dropout", [(True, 0.3), (True, 0.0), (False, 0.5)])
@pytest.mark.parametrize("stop", [("step", 1), ("step", STEPS), ("epoch_end", 2), ("step", 11)])
def test_resume_with_augmentation_and_dropout_is_bit_identical(
        tmp_path: Path, augment: bool, dropout: float, stop: tuple[str, int]) -> None:
    config = make_config(augment=augment, dropout=dropout)
    trainer, _ = run_with_interruptions(config, [stop], tmp_path / "checkpoint.npz")
    assert_same_state(final_state(trainer), uninterrupted(config))


@pytest.mark.parametrize("changes", [{"dtype": "float64"}, {"schedule": "constant", "lr": 0.003},
                                     {"batch_size": 25, "weight_decay": 0.0},
                                     {"earlier_fit_epochs": 2}])
def test_resume_other_setups_bit_identical(tmp_path: Path, changes: dict) -> None:
    config = make_config(**changes)
    steps = -(-N_TRAIN // config["batch_size"])
    trainer, _ = run_with_interruptions(config, [("step", steps + 2)], tmp_path / "c.npz")
    assert_same_state(final_state(trainer), uninterrupted(config))


def test_interrupted_runs_differ_from_the_reference_without_the_checkpoint(tmp_path: Path) -> None:
    """Control: restarting from scratch with the weights alone (no generator,
    position or Adam state) does not reproduce the run, so the comparisons
    above are not vacuous."""
    config = make_config(augment=True)
    trainer = build(config, ("step", 5))
    with pytest.raises(TrainingInterrupted):
        trainer.run()
    weights = trainer.model.state_dict()
    fresh = build(config)
    fresh.model.load_state_dict(weights)
    fresh.run()
    reference = uninterrupted(config)
    assert not all(np.array_equal(fresh.model.state_dict()[k], reference["model"][k])
                   for k in reference["model"])


# ---- the file ----------------------------------------------------------------------------
def _checkpoint(tmp_path: Path, stop=("step", STEPS + 3), **changes) -> tuple[Path, Trainer, dict]:
    config = make_config(**changes)
    trainer = build(config, stop)
    with pytest.raises(TrainingInterrupted):
        trainer.run()
    path = tmp_path / "checkpoint.npz"
    save_checkpoint(path, trainer, config)
    return path, trainer, config


def test_checkpoint_is_readable_with_numpy_alone(tmp_path: Path) -> None:
    path, trainer, config = _checkpoint(tmp_path)
    meta, arrays = helpers.read_npz_plain(path)
    assert meta["format"] == "nnscratch.checkpoint" and meta["version"] == 1
    assert meta["config"] == config
    assert (meta["epoch"], meta["batch"]) == (1, 3)
    assert meta["n_train"] == N_TRAIN
    assert meta["architecture"] == trainer.model.config()
    state = trainer.state_dict()
    for name, value in state["model"].items():
        assert np.array_equal(arrays[f"model.{name}"], value)
        assert np.array_equal(arrays[f"optimizer.m.{name}"], state["optimizer"]["m"][name])
        assert np.array_equal(arrays[f"optimizer.v.{name}"], state["optimizer"]["v"][name])
        assert np.array_equal(arrays[f"best.{name}"], state["best"]["weights"][name])
    assert arrays["perm"].dtype == np.int64
    assert sorted(arrays["perm"]) == list(range(N_TRAIN))
    for name, array in arrays.items():
        assert meta["arrays"][name]["sha256"] == helpers.sha256_hex(array)


def test_checkpoint_before_any_validation_has_no_best_weights(tmp_path: Path) -> None:
    path, _, _ = _checkpoint(tmp_path, stop=("step", 2))
    meta, arrays = helpers.read_npz_plain(path)
    assert meta["best"] is None
    assert not any(name.startswith("best.") for name in arrays)
    _, loaded = load_checkpoint(path)
    assert loaded["trainer_state"]["best"] is None


def test_model_and_checkpoint_files_are_not_interchangeable(tmp_path: Path) -> None:
    path, trainer, _ = _checkpoint(tmp_path)
    with pytest.raises(ModelFileError, match="format is 'nnscratch.checkpoint', expected 'nnscratch.model'"):
        load(path)
    save(trainer.model, tmp_path / "model.npz")
    with pytest.raises(ModelFileError, match="format is 'nnscratch.model', expected 'nnscratch.checkpoint'"):
        load_checkpoint(tmp_path / "model.npz")


def test_checkpoint_save_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path, trainer, config = _checkpoint(tmp_path)
    data = path.read_bytes()
    trainer.stop_requested = False
    trainer.stop_at_step = STEPS + 5
    with pytest.raises(TrainingInterrupted):
        trainer.run()

    def failing(file, *args, **kwargs):
        file.write(b"PK partial")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", failing)
    with pytest.raises(OSError):
        save_checkpoint(path, trainer, config)
    monkeypatch.undo()
    assert path.read_bytes() == data
    assert helpers.temp_files(tmp_path) == []
    assert load_checkpoint(path)[1]["batch"] == 3


def _rewrite(path: Path, edit_meta=None, edit_arrays=None) -> Path:
    meta, arrays = helpers.read_npz_plain(path)
    meta.pop("arrays")
    if edit_meta:
        edit_meta(meta)
    if edit_arrays:
        edit_arrays(arrays)
    return helpers.write_model_file(path, meta, arrays)


@pytest.mark.parametrize("perm", ["out of range", "negative"])
def test_checkpoint_perm_out_of_range_is_rejected(tmp_path: Path, perm: str) -> None:
    path, _, _ = _checkpoint(tmp_path)

    def edit(arrays):
        arrays["perm"] = arrays["perm"].copy()
        arrays["perm"][5] = N_TRAIN + 7 if perm == "out of range" else -1
    _rewrite(path, edit_arrays=edit)
    with pytest.raises(ModelFileError, match="perm is not a permutation"):
        load_checkpoint(path)


def test_checkpoint_perm_with_repeated_samples_is_rejected(tmp_path: Path) -> None:
    """A perm that visits one sample twice and another never is in range but
    is not a permutation: resuming from it would silently train on other data."""
    path, _, _ = _checkpoint(tmp_path)

    def edit(arrays):
        arrays["perm"] = arrays["perm"].copy()
        arrays["perm"][1] = arrays["perm"][0]
    _rewrite(path, edit_arrays=edit)
    with pytest.raises(ModelFileError, match="perm is not a permutation"):
        load_checkpoint(path)


@pytest.mark.parametrize("field,value,fragment", [
    ("epoch", "1", "'epoch' is missing or not a int"),
    ("batch", None, "'batch' is missing or not a int"),
    ("n_train", 0, "n_train 0 is out of range"),
    ("n_train", 2**40, "out of range"),
    ("history", [], "'history' is missing or not a dict"),
    ("rng_state", "PCG64", "'rng_state' is missing or not a dict"),
    ("dtype", "int8", "dtype must be one of"),
    ("seen", True, "'seen' is missing or not a int"),
])
def test_checkpoint_metadata_is_checked(tmp_path: Path, field: str, value: Any, fragment: str) -> None:
    path, _, _ = _checkpoint(tmp_path)
    _rewrite(path, edit_meta=lambda meta: meta.__setitem__(field, value))
    with pytest.raises(ModelFileError) as info:
        load_checkpoint(path)
    assert fragment in str(info.value)
    assert str(path) in str(info.value)


def test_checkpoint_from_another_training_set_does_not_fit(tmp_path: Path) -> None:
    path, _, config = _checkpoint(tmp_path)
    _, meta = load_checkpoint(path)
    rng = np.random.default_rng(0)
    model = Sequential(Flatten(), Dense(SIDE * SIDE, 12), ReLU(), Dropout(0.3), Dense(12, 3), seed=rng)
    other = Trainer(model, X[:50], Y[:50], epochs=EPOCHS, batch_size=BATCH, verbose=0)
    with pytest.raises(ValueError, match="100 training samples, this run has 50"):
        other.load_state_dict(meta["trainer_state"])


def test_a_state_saved_on_other_samples_of_the_same_count_does_not_fit(tmp_path: Path) -> None:
    path, _, config = _checkpoint(tmp_path)
    _, meta = load_checkpoint(path)
    assert meta["data_digest"] == build(config).data_digest()
    swapped = build(config)
    swapped.y = swapped.y[::-1].copy()  # the same images and count, other labels in order
    swapped._digest = None
    with pytest.raises(ValueError, match="other training samples or labels"):
        swapped.load_state_dict(meta["trainer_state"])
    build(config).load_state_dict(meta["trainer_state"])  # the same data: fits


@pytest.mark.parametrize("key, value", [("warmup_epochs", 2.0), ("epochs", EPOCHS + 1),
                                        ("schedule", "constant")])
def test_the_command_line_finds_a_schedule_edited_mid_run(tmp_path: Path, key, value) -> None:
    from nnscratch.cli import _config_mismatches
    path, _, config = _checkpoint(tmp_path)  # mid-run, in the cosine part of the schedule
    _, meta = load_checkpoint(path)
    trainer = build(config)
    assert _config_mismatches(config, meta, trainer.model, trainer) == []
    edited = dict(config, **{key: value})
    trainer = build(edited)
    problems = _config_mismatches(edited, meta, trainer.model, trainer)
    assert len(problems) == 1 and "learning rate" in problems[0], problems


def test_the_command_line_compares_no_lr_with_a_checkpoint_older_than_initial_lr(
        tmp_path: Path) -> None:
    from nnscratch.cli import _config_mismatches
    path, _, config = _checkpoint(tmp_path)
    _, meta = load_checkpoint(path)
    del meta["optimizer"]["initial_lr"]
    trainer = build(config)
    assert _config_mismatches(config, meta, trainer.model, trainer) == []


@pytest.mark.parametrize("step", ["12", None, 1.5])
def test_the_command_lines_comparison_leaves_a_bad_step_count_to_the_trainer(
        tmp_path: Path, step) -> None:
    from nnscratch.cli import _config_mismatches
    path, _, config = _checkpoint(tmp_path)
    _, meta = load_checkpoint(path)
    meta["optimizer"]["step"] = step
    meta["trainer_state"]["optimizer"]["step"] = step
    trainer = build(config)
    assert _config_mismatches(config, meta, trainer.model, trainer) == []
    with pytest.raises(ValueError, match="first_step must be an integer between 0 and"):
        trainer.load_state_dict(meta["trainer_state"])


def test_a_checkpoint_from_before_the_data_digest_still_resumes(tmp_path: Path) -> None:
    path, _, config = _checkpoint(tmp_path)
    _rewrite(path, edit_meta=lambda meta: meta.pop("data_digest"))
    _, meta = load_checkpoint(path)
    assert meta["trainer_state"]["data_digest"] is None
    build(config).load_state_dict(meta["trainer_state"])


def test_a_run_with_a_reused_optimizer_records_where_its_schedule_starts(tmp_path: Path) -> None:
    config = make_config(earlier_fit_epochs=2)
    trainer = build(config, ("step", 2 * STEPS + 3))
    assert trainer.first_step == 2 * STEPS
    with pytest.raises(TrainingInterrupted):
        trainer.run()
    save_checkpoint(tmp_path / "c.npz", trainer, config)
    _, meta = load_checkpoint(tmp_path / "c.npz")
    assert meta["first_step"] == meta["trainer_state"]["first_step"] == 2 * STEPS


def test_state_dict_copies_unless_asked_for_the_live_arrays() -> None:
    trainer = build(make_config(epochs=1))
    trainer.run()
    params = {p.name: p.value for p in trainer.model.parameters()}
    copied, live = trainer.state_dict(), trainer.state_dict(copy=False)
    assert live["perm"] is trainer.perm and not np.shares_memory(copied["perm"], trainer.perm)
    for name, value in params.items():
        assert live["model"][name] is value
        assert not np.shares_memory(copied["model"][name], value)
        for moment in ("m", "v"):
            own = getattr(trainer.optimizer, moment)[name]
            assert live["optimizer"][moment][name] is own
            assert not np.shares_memory(copied["optimizer"][moment][name], own)
            assert np.array_equal(copied["optimizer"][moment][name], own)
    # Only the arrays differ: both forms describe the same state.
    same = {k: v for k, v in copied.items() if k not in ("perm", "model", "optimizer")}
    assert same == {k: v for k, v in live.items() if k not in ("perm", "model", "optimizer")}


def test_checkpoint_written_from_live_arrays_holds_the_state_at_saving(tmp_path: Path) -> None:
    # save_checkpoint writes the live arrays; a step taken after saving must not
    # reach the file (it is written completely before save_checkpoint returns).
    config = make_config()
    trainer = build(config, ("step", 5))
    with pytest.raises(TrainingInterrupted):
        trainer.run()
    save_checkpoint(tmp_path / "c.npz", trainer, config)
    before = {p.name: p.value.copy() for p in trainer.model.parameters()}
    trainer.stop_requested = False
    trainer.run()  # changes every live array
    _, meta = load_checkpoint(tmp_path / "c.npz")
    saved = meta["trainer_state"]["model"]
    assert all(np.array_equal(saved[name], value) for name, value in before.items())


@pytest.mark.parametrize("edit, message", [
    (lambda s: s.update(history={}), "history must have the lists"),
    (lambda s: s["history"]["loss"].append(1.0), "every history list must hold 1 numbers"),
    (lambda s: s["history"].update(loss=["x"]), "every history list must hold 1 numbers"),
    (lambda s: s.update(best=dict(s["best"], val_accuracy="x")), "best must be empty or hold"),
    (lambda s: s.update(batch=-5), "batch must be an integer in 0..3"),
    (lambda s: s.update(batch=1000), "batch must be an integer in 0..3"),
    (lambda s: s.update(epoch=99), "epoch must be an integer in 0..2"),
    (lambda s: s.update(epoch=-2), "epoch must be an integer in 0..2"),
    (lambda s: s.update(first_step=10**6), "first_step must be an integer between 0 and"),
    (lambda s: s.update(perm=s["perm"][::-1][:-1]), "taken on 9 training samples"),
    (lambda s: s.update(perm=np.zeros_like(s["perm"])), "not a permutation"),
    (lambda s: s.update(correct=50), "correct <= seen"),
    (lambda s: s.pop("rng_state"), "needs the keys"),
    (lambda s: s["best"]["weights"].update({"layers.0.weight": np.zeros((2, 2))}), "shaped like"),
    (lambda s: s["optimizer"].update(betas=[1.5, 0.9]), "optimizer or generator state does not fit"),
    (lambda s: s.update(rng_state={"bit_generator": "nonsense"}), "does not fit"),
    (lambda s: s["rng_state"]["state"].update(state=-1), "does not fit"),  # numpy: OverflowError
    (lambda s: s["optimizer"].update(step=s["optimizer"]["step"] + 1), "was batch_size changed"),
    (lambda s: s.update(data_digest="0" * 64), "other training samples or labels"),
])
def test_a_hand_edited_trainer_state_is_refused_and_changes_nothing(edit, message):
    rng = np.random.default_rng(0)
    x, y = rng.random((10, 4)), np.arange(10) % 3

    def trainer():
        model = Sequential(Dense(4, 5), ReLU(), Dense(5, 3), seed=0)
        return Trainer(model, x, y, epochs=2, batch_size=4, validation_data=(x, y),
                          restore_best=True, verbose=0)

    done = trainer()
    done.epochs = 1
    done.run()
    done.epochs = 2
    state = done.state_dict()
    edit(state)
    fresh = trainer()
    before = fresh.state_dict()
    with pytest.raises(ValueError, match=message):
        fresh.load_state_dict(state)
    after = fresh.state_dict()
    assert after["epoch"] == before["epoch"] == 0
    assert after["optimizer"]["step"] == before["optimizer"]["step"] == 0
    assert after["rng_state"] == before["rng_state"]
    for key in before["model"]:
        np.testing.assert_array_equal(after["model"][key], before["model"][key])
