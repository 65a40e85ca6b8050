"""Where one training step of the reference model spends its time.

    python benchmarks/profile_step.py

Runs the reference model (784-256-128-10, ReLU, Dropout 0.2, batch 128) on
the real training images and times each part of the step separately over one
epoch, after a warm-up epoch: the batch gather, each layer's forward and
backward (the Dense rows include their matrix products), the loss, Adam and
the accuracy bookkeeping. The timers add ~0.1 us per part; the total is
comparable with, not identical to, the fit epoch time.
"""

from __future__ import annotations

import time
from collections import defaultdict

import numpy as np

import nnscratch as nn


def main() -> None:
    (x, y), _ = nn.load_fashion_mnist()
    y = y.astype(np.intp)
    model = nn.Sequential(nn.Flatten(), nn.Dense(784, 256), nn.ReLU(), nn.Dropout(0.2),
                          nn.Dense(256, 128), nn.ReLU(), nn.Dropout(0.2), nn.Dense(128, 10), seed=0)
    optimizer = nn.Adam(model.parameters())
    nn.Trainer(model, x, y, optimizer=optimizer, epochs=1, verbose=0).run()  # warm-up
    clock, spent = time.perf_counter, defaultdict(float)
    perm = np.random.default_rng(0).permutation(len(x))
    yb, pred = np.empty(128, np.intp), np.empty(128, np.intp)
    steps = len(x) // 128
    for step in range(steps):
        idx = perm[step * 128:(step + 1) * 128]
        t = clock()
        h = model._as_batch(x, idx)
        spent["gather + scale (uint8 -> float32)"] += clock() - t
        for i, stage in enumerate(model._stages):
            t = clock()
            h = stage.forward(h)
            spent[f"forward  {i} {stage!r}"] += clock() - t
        t = clock()
        np.take(y, idx, out=yb)
        model.loss.forward(h, yb)
        grad = model.loss.backward()
        spent["softmax cross-entropy (fwd+bwd)"] += clock() - t
        for i in range(len(model._stages) - 1, 0, -1):
            stage = model._stages[i]
            t = clock()
            grad = stage.backward(grad, input_grad=False) if i == 1 else stage.backward(grad)
            spent[f"backward {i} {stage!r}"] += clock() - t
        t = clock()
        optimizer.step()
        spent["Adam (all parameters)"] += clock() - t
        t = clock()
        np.argmax(h, axis=1, out=pred)
        int(np.count_nonzero(pred == yb))
        spent["accuracy bookkeeping"] += clock() - t
    total = sum(spent.values())
    for name, seconds in spent.items():
        print(f"{name:<56} {seconds / steps * 1e6:8.1f} us  {seconds / total:6.1%}")
    print(f"{'total per step':<56} {total / steps * 1e6:8.1f} us")


if __name__ == "__main__":
    main()
