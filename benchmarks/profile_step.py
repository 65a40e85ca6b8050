"""Where one training step of the reference model spends its time.

    python benchmarks/profile_step.py             # the reference model
    python benchmarks/profile_step.py 1024 1024   # other hidden widths

This profiles the layer-by-layer step (the path with ``NNSCRATCH_THREADED_STEP=0``);
the threaded step runs as one kernel, so ``benchmarks/threaded_step.py`` measures
it against its own products instead.

Runs the reference model (784-256-128-10, ReLU, Dropout 0.2, batch 128) on
the real training images and times each part of the step separately over one
epoch, after a warm-up epoch: the batch gather, each stage's forward and
backward (a stage is a fused Dense -> ReLU -> Dropout block or a lone layer;
their rows include the matrix products), the loss, Adam and the accuracy
bookkeeping. The timers add ~0.1 us per part; the total is
comparable with, not identical to, the fit epoch time.
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict

import numpy as np

import nnscratch as nn
from nnscratch import kernels


def label(stage) -> str:
    """'Dense(784, 256) + ReLU + Dropout(0.2)' for a fused block, the layer itself otherwise."""
    parts = []
    for layer in getattr(stage, "layers", (stage,)):
        if isinstance(layer, nn.Dense):
            parts.append(f"Dense({layer.in_features}, {layer.out_features})")
        elif isinstance(layer, nn.Dropout):
            parts.append(f"Dropout({layer.p})")
        else:
            parts.append(type(layer).__name__)
    return " + ".join(parts)


def main() -> None:
    (x, y), _ = nn.load_fashion_mnist()
    y = y.astype(np.intp)
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("hidden", nargs="*", type=int, default=[256, 128],
                        help="hidden widths (default 256 128)")
    hidden = parser.parse_args().hidden
    layers, width = [nn.Flatten()], 784
    for units in hidden:
        layers += [nn.Dense(width, units), nn.ReLU(), nn.Dropout(0.2)]
        width = units
    model = nn.Sequential(*layers, nn.Dense(width, 10), seed=0)
    optimizer = nn.Adam(model.parameters())
    nn.Trainer(model, x, y, optimizer=optimizer, epochs=1, verbose=0).run()  # warm-up
    clock, spent = time.perf_counter, defaultdict(float)
    perm = np.random.default_rng(0).permutation(len(x))
    yb = np.empty(128, np.intp)
    steps = len(x) // 128
    for step in range(steps):
        idx = perm[step * 128:(step + 1) * 128]
        t = clock()
        h = model._as_batch(x, idx)
        spent["gather + scale (uint8 -> float32)"] += clock() - t
        for i, stage in enumerate(model._stages):
            t = clock()
            h = stage.forward(h)
            spent[f"forward  {i} {label(stage)}"] += clock() - t
        t = clock()
        np.take(y, idx, out=yb)
        model.loss.forward(h, yb)
        grad = model.loss.backward()
        spent["softmax cross-entropy (fwd+bwd)"] += clock() - t
        for i in range(len(model._stages) - 1, 0, -1):
            stage = model._stages[i]
            t = clock()
            grad = stage.backward(grad, input_grad=False) if i == 1 else stage.backward(grad)
            spent[f"backward {i} {label(stage)}"] += clock() - t
        t = clock()
        optimizer.step()
        spent["Adam (all parameters)"] += clock() - t
        t = clock()
        kernels.count_correct(h, yb)
        spent["accuracy bookkeeping"] += clock() - t
    total = sum(spent.values())
    for name, seconds in spent.items():
        print(f"{name:<50} {seconds / steps * 1e6:8.1f} us  {seconds / total:6.1%}")
    print(f"{'total per step':<50} {total / steps * 1e6:8.1f} us")


if __name__ == "__main__":
    main()
