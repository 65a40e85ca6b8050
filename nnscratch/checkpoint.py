"""Training checkpoints: everything needed to resume a run exactly.

A checkpoint is a ``.npz`` in the same safe format as model files (see
``nnscratch.io``: atomic writes, strict verified loads, no pickle), with
format name ``nnscratch.checkpoint``. Arrays:

    model.layers.{i}.weight / .bias          current weights
    optimizer.m.layers.{i}.weight / ...      Adam's first moments
    optimizer.v.layers.{i}.weight / ...      Adam's second moments
    best.layers.{i}.weight / ...             weights of the best validation epoch (if any)
    perm                                     the current epoch's sample order (int64)

and JSON metadata: the run's configuration, the architecture and dtype, the
position (epoch, batch, and the optimizer step the run started from), running
sums of the epoch in progress, the history, Adam's hyperparameters and step
count, the generator's state, and a SHA-256 of the training samples (so that a
run is never resumed on another split).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from .io import (
    FLOAT_DTYPES,
    FORMAT_VERSION,
    ModelFileError,
    architecture_arrays,
    atomic_write_npz,
    read_npz,
    validate_architecture,
)
from .training import Trainer

CHECKPOINT_FORMAT = "nnscratch.checkpoint"


def save_checkpoint(path: str | os.PathLike, trainer: Trainer, config: dict[str, Any]) -> None:
    """Write ``trainer``'s full state and the run's ``config`` to ``path`` atomically."""
    state = trainer.state_dict(copy=False)  # written out at once: no copies needed
    arrays = {f"model.{k}": v for k, v in state["model"].items()}
    for moment in ("m", "v"):
        arrays.update({f"optimizer.{moment}.{k}": v for k, v in state["optimizer"][moment].items()})
    if state["best"] is not None:
        arrays.update({f"best.{k}": v for k, v in state["best"]["weights"].items()})
    arrays["perm"] = state["perm"].astype(np.int64)
    optimizer = {k: v for k, v in state["optimizer"].items() if k not in ("m", "v")}
    best = None if state["best"] is None else {
        k: v for k, v in state["best"].items() if k != "weights"}
    meta = {"format": CHECKPOINT_FORMAT, "version": FORMAT_VERSION, "config": config,
            "architecture": trainer.model.config(), "dtype": str(trainer.model.dtype),
            "n_train": len(state["perm"]), "optimizer": optimizer, "best": best,
            **{k: state[k] for k in ("epoch", "batch", "first_step", "loss_sum", "correct",
                                     "seen", "elapsed", "history", "rng_state", "data_digest")}}
    atomic_write_npz(path, arrays, meta)


def _expected_arrays(meta: dict[str, Any], problems: list[str]) -> dict[str, tuple]:
    dtype = meta.get("dtype")
    if dtype not in FLOAT_DTYPES:
        problems.append(f"dtype must be one of {FLOAT_DTYPES}, got {dtype!r}")
    if "first_step" in meta and (type(meta["first_step"]) is not int or meta["first_step"] < 0):
        problems.append(f"first_step must be an integer >= 0, got {meta['first_step']!r}")
    for key, kind in (("epoch", int), ("batch", int), ("n_train", int), ("seen", int),
                      ("correct", int), ("config", dict), ("history", dict),
                      ("optimizer", dict), ("rng_state", dict)):
        if not isinstance(meta.get(key), kind) or isinstance(meta.get(key), bool):
            problems.append(f"metadata field {key!r} is missing or not a {kind.__name__}")
    digest = meta.get("data_digest")  # absent from checkpoints written before it existed
    if digest is not None and not (isinstance(digest, str) and len(digest) == 64):
        problems.append(f"data_digest must be a SHA-256 in hex, got {digest!r}")
    if isinstance(meta.get("n_train"), int) and not 1 <= meta["n_train"] <= 1 << 31:
        problems.append(f"n_train {meta['n_train']} is out of range")
    before = len(problems)
    validate_architecture(meta.get("architecture"), problems)
    if len(problems) > before or problems:
        return {}
    arch = meta["architecture"]
    wanted = {}
    prefixes = ["model.", "optimizer.m.", "optimizer.v."]
    if meta.get("best") is not None:
        prefixes.append("best.")
    for prefix in prefixes:
        wanted.update(architecture_arrays(arch, dtype, prefix))
    wanted["perm"] = ((meta["n_train"],), "int64")
    return wanted


def load_checkpoint(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Any]]:
    """Read a checkpoint: returns (config, meta) with ``meta["trainer_state"]``
    ready for ``Trainer.load_state_dict``. Raises ``ModelFileError``."""
    meta, arrays = read_npz(path, CHECKPOINT_FORMAT, _expected_arrays)

    def strip(prefix: str) -> dict[str, np.ndarray]:
        return {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}

    best = None
    if meta.get("best") is not None:
        best = dict(meta["best"], weights=strip("best."))
    meta["trainer_state"] = {
        "model": strip("model."),
        "optimizer": dict(meta["optimizer"], m=strip("optimizer.m."), v=strip("optimizer.v.")),
        "perm": arrays["perm"], "best": best,
        # Checkpoints older than this field were all of runs that started at step 0.
        "first_step": meta.get("first_step", 0),
        "data_digest": meta.get("data_digest"),
        **{k: meta[k] for k in ("epoch", "batch", "loss_sum", "correct", "seen",
                                "elapsed", "history", "rng_state")},
    }
    perm = arrays["perm"]
    if not np.array_equal(np.sort(perm), np.arange(perm.size)):
        raise ModelFileError(path, "perm is not a permutation of the training samples")
    return meta["config"], meta
