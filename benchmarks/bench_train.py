"""Training-speed benchmark: nnscratch against the matrix-multiply floor and peers.

    python benchmarks/bench_train.py                 # both models, all peers found
    python benchmarks/bench_train.py --quick         # fewer epochs, reference model only
    python benchmarks/bench_train.py --json benchmarks/results.json

In one run it measures, each in a fresh subprocess on the real Fashion-MNIST
training images (so thread pools of one framework cannot slow another), and
each in rounds in rotating order (three on the reference model, ``--rounds``;
one on the large model, ``--large-rounds``), pooling epochs 2..N of
every round:

* the GEMM floor: only the matrix multiplies of each training step, for exactly
  the reference shapes, into preallocated outputs (``peers.gemm_floor``);
* nnscratch ``fit`` (Numba kernels: the threaded step where the run qualifies,
  as the reference model does), the same with the layer-by-layer step
  (``NNSCRATCH_THREADED_STEP=0``, reference model only) and the NumPy-twin backend;
* a carefully written pure-NumPy peer and, when importable, PyTorch eager,
  scikit-learn and JAX doing the same work (``peers.py``);

and reports the median epoch of epochs 2..N (epoch 1 separately), its ratio to
the floor and to each peer, the floor and nnscratch once more with their epochs
alternating in one process (the steadiest ratio on a machine whose speed
drifts), time to first batch and inference on the 10k test images. Then it runs
the real ``nnscratch train`` command to measure its peak RSS and its time from
launch to the first finished batch, cold (empty Numba cache) and warm. Ratios
measured within one run are the figures to quote: the machine's absolute speed
varies from run to run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import peers  # noqa: E402  (the sibling module, found through the line above)

ROOT = Path(__file__).resolve().parent.parent


def reference_trainer(x, y, hidden, epochs, batch_size, seed):
    """The benchmark's model (Dense/ReLU/Dropout per hidden width) in an nnscratch Trainer."""
    import nnscratch as nn

    layers = [nn.Flatten()]
    width = peers.N_IN
    for units in hidden:
        layers += [nn.Dense(width, units), nn.ReLU(), nn.Dropout(peers.DROPOUT)]
        width = units
    layers.append(nn.Dense(width, peers.N_OUT))
    model = nn.Sequential(*layers, seed=seed)
    return nn.Trainer(model, x, y, optimizer=nn.Adam(model.parameters(), lr=peers.LR),
                      epochs=epochs, batch_size=batch_size, verbose=0)


def nnscratch_fit(x, y, hidden=peers.MODELS["small"], epochs=1, batch_size=128, seed=0,
                  x_test=None) -> dict:
    """The reference work with nnscratch: Sequential + Trainer (what ``fit`` runs)."""
    started = time.time()
    from nnscratch import kernels

    trainer = reference_trainer(x, y, hidden, epochs, batch_size, seed)
    model = trainer.model
    history = trainer.run()
    infer_cold_s, infer_s = peers._time_cold_then_warm(lambda: model.predict(x_test))
    # "numba" takes the threaded step; "numba-layers" is the layer-by-layer step
    # (NNSCRATCH_THREADED_STEP=0), the path every run took before it.
    name = kernels.BACKEND + ("-layers" if kernels.BACKEND == "numba" and trainer._threaded is None
                              else "")
    return peers._result(f"nnscratch[{name}]", epoch_times=history["epoch_time"],
                         first_batch_s=trainer.first_step_done - started,
                         infer_s=infer_s, infer_cold_s=infer_cold_s, final_loss=history["loss"][-1])


def paired_with_floor(x, y, hidden=peers.MODELS["small"], epochs=1, batch_size=128, seed=0,
                      x_test=None) -> dict:
    """The floor and nnscratch in one process, epochs alternating (floor, ours,
    floor, ours, ...), so both see the same machine: on a shared VM whose speed
    drifts over minutes, the ratio of each pair is steadier than a ratio of
    medians taken minutes apart. Reports the median of the pairs' ratios."""
    trainer = reference_trainer(x, y, hidden, 1, batch_size, seed)
    floor, ours = [], []
    for epoch in range(1, epochs + 1):
        floor += peers.gemm_floor(x, y, hidden=hidden, epochs=1, batch_size=batch_size)["epoch_times"]
        trainer.epochs = epoch
        ours.append(trainer.run()["epoch_time"][-1])
    ratios = [a / b for a, b in zip(ours[1:], floor[1:])] or [ours[0] / floor[0]]
    result = peers._result("paired", epoch_times=ours, note="floor and nnscratch epochs alternating")
    result.update(floor_epoch_times=floor, ratios=ratios, median_ratio=statistics.median(ratios))
    return result


RUNNERS = {"nnscratch": nnscratch_fit, "paired": paired_with_floor, **peers.PEERS}


def worker(name: str, model: str, epochs: int) -> None:
    """Child process: run one peer on the real training images, print its result."""
    from nnscratch.datasets import load_fashion_mnist

    (x, y), (x_test, _) = load_fashion_mnist()
    result = RUNNERS[name](x, y, hidden=peers.MODELS[model], epochs=epochs, x_test=x_test)
    result["model"] = model
    print("RESULT " + json.dumps(result))


def run_isolated(name: str, model: str, epochs: int, env: dict | None = None) -> dict:
    cmd = [sys.executable, __file__, "--worker", name, "--model", model, "--epochs", str(epochs)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("RESULT "):
            result = json.loads(line[len("RESULT "):])
            break
    else:
        result = peers._skipped(name, f"failed (exit {proc.returncode}): {proc.stderr.strip()[-300:]}")
        result["model"] = model
    return result


def train_command(numba_cache: str, epochs: int) -> dict:
    """Launch ``nnscratch train`` and measure launch-to-first-batch and peak RSS."""
    with tempfile.TemporaryDirectory() as out:
        env = dict(os.environ, NUMBA_CACHE_DIR=numba_cache)
        launched = time.time()
        proc = subprocess.Popen([sys.executable, "-m", "nnscratch.cli", "train", "--quiet",
                                 "--epochs", str(epochs), "--out", f"{out}/run"],
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        _, status, usage = os.wait4(proc.pid, 0)
        total = time.time() - launched
        if os.waitstatus_to_exitcode(status) != 0:
            raise RuntimeError(f"nnscratch train failed: {proc.stderr.read().decode()[-500:]}")
        metrics = json.loads(Path(out, "run", "metrics.json").read_text())
    return {"first_batch_s": metrics["timings"]["first_batch_unix_time"] - launched,
            "peak_rss_mb": usage.ru_maxrss / 1024, "total_s": total, "epochs": epochs,
            "test_accuracy": metrics["test"]["accuracy"]}


def merge_rounds(runs: list[dict]) -> dict:
    """One result from a peer's rounds: epoch 1 of the first round, then the
    steady-state epochs (2..N) of every round, so ``median_epoch`` pools them."""
    done = [r for r in runs if r["available"]]
    if not done:
        return runs[0]
    merged = dict(done[0], rounds=len(done))
    if all(r.get("infer_s") is not None for r in done):  # the median over rounds, like epochs
        merged["infer_s"] = statistics.median(r["infer_s"] for r in done)
    merged["epoch_times"] = done[0]["epoch_times"][:1] + [t for r in done for t in r["epoch_times"][1:]]
    if "ratios" in merged:
        merged["floor_epoch_times"] = [t for r in done for t in r["floor_epoch_times"]]
        merged["ratios"] = [x for r in done for x in r["ratios"]]
        merged["median_ratio"] = statistics.median(merged["ratios"])
    return merged


def format_results(results: list[dict]) -> str:
    lines = [peers.format_table([r for r in results if r["name"] != "paired"]), ""]
    for r in results:
        if r["name"] == "paired" and not r["available"]:
            lines.append(f"{r['model']}: paired floor/nnscratch run {r['reason']}")
        elif r["name"] == "paired":
            lines.append(f"{r['model']}: floor and nnscratch alternating in one process: nnscratch epoch = "
                         f"{r['median_ratio']:.2f}x the floor epoch next to it (median of "
                         f"{len(r['ratios'])} pairs, range {min(r['ratios']):.2f}-{max(r['ratios']):.2f})")
    for model in dict.fromkeys(r["model"] for r in results):
        rows = {r["name"]: r for r in results
                if r["model"] == model and r["available"] and r["name"] != "paired"}
        ours = peers.median_epoch(rows["nnscratch[numba]"]) if "nnscratch[numba]" in rows else None
        if ours is None:
            continue
        floor = peers.median_epoch(rows["gemm_floor"]) if "gemm_floor" in rows else None
        lines.append(f"{model}: nnscratch median epoch {ours:.3f} s = "
                     + (f"{ours / floor:.2f}x the GEMM floor" if floor else "(no floor)"))
        for name, row in rows.items():
            if name in ("nnscratch[numba]", "gemm_floor"):
                continue
            theirs = peers.median_epoch(row)
            infer = (f"; inference {row['infer_s'] / rows['nnscratch[numba]']['infer_s']:.2f}x "
                     "nnscratch's time" if row.get("infer_s") else "")
            lines.append(f"  vs {name:<16} epoch {theirs:.3f} s: nnscratch is "
                         f"{theirs / ours:.2f}x faster{infer}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4,
                        help="epochs per peer and round (epochs 2..N of every round are pooled)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="run every peer this many times on the reference model, in rotating "
                             "order, so that each sees the machine's slow and fast spells alike")
    parser.add_argument("--large-rounds", type=int, default=1,
                        help="rounds on the large model (784-1024-1024-10), which only shows "
                             "scaling; its epochs are 10x longer, so 3 rounds would add ~7 min")
    parser.add_argument("--quick", action="store_true", help="3 epochs, 1 round, reference model only")
    parser.add_argument("--peers", default="torch_eager,sklearn_mlp,jax_scan,numpy_careful",
                        help="peers besides the floor and nnscratch (comma-separated)")
    parser.add_argument("--json", type=Path, help="also write every result as JSON")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--model", default="small", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker, args.model, args.epochs)
        return 0

    epochs = 3 if args.quick else args.epochs
    rounds = {"small": 1 if args.quick else args.rounds, "large": args.large_rounds}
    models = ["small"] if args.quick else ["small", "large"]
    others = [p for p in args.peers.split(",") if p]
    for warning in peers.blas_env_warnings() + peers.load_warnings():
        print(warning)
    print(peers.machine_info())
    print(peers.blas_info())
    results = []
    for model in models:
        plan = [("gemm_floor", None), ("nnscratch", None), ("paired", None),
                ("nnscratch", dict(os.environ, NNSCRATCH_THREADED_STEP="0")),
                ("nnscratch", dict(os.environ, NNSCRATCH_BACKEND="numpy"))]
        plan += [(name, None) for name in others]
        # The slowest ones run on the reference model only.
        plan = [(name, env) for name, env in plan
                if model == "small" or (env is None and name != "sklearn_mlp")]
        runs: dict[int, list[dict]] = {i: [] for i in range(len(plan))}
        model_rounds = rounds[model]
        for r in range(model_rounds):
            for i in list(range(r % len(plan), len(plan))) + list(range(r % len(plan))):
                name, env = plan[i]
                variant = "" if env is None else (" (numpy twins)" if "NNSCRATCH_BACKEND" in env
                                                  else " (layer-by-layer step)")
                print(f"round {r + 1}/{model_rounds}: {name}{variant} "
                      f"on the {model} model...", flush=True)
                runs[i].append(run_isolated(name, model, epochs, env))
        results += [merge_rounds(runs[i]) for i in range(len(plan))]
    print("\nrunning `nnscratch train --epochs 1` with an empty, then a warm Numba cache...")
    with tempfile.TemporaryDirectory() as cache:
        command = {"cold": train_command(cache, 1), "warm": train_command(cache, 1)}
    print()
    print(format_results(results))
    print(f"\nnnscratch train: time to first batch {command['cold']['first_batch_s']:.2f} s cold "
          f"(empty Numba cache), {command['warm']['first_batch_s']:.2f} s warm; peak RSS "
          f"{command['warm']['peak_rss_mb']:.0f} MiB (cold run {command['cold']['peak_rss_mb']:.0f} MiB)")
    if args.json:
        args.json.write_text(json.dumps({"machine": peers.machine_info(), "blas": peers.blas_info(),
                                         "epochs": epochs, "rounds": rounds, "results": results,
                                         "train_command": command}, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
