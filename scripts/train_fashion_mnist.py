"""Train a Fashion-MNIST classifier with nnscratch, start to finish, in one screen.

This is `nnscratch train` as a script to read (the command adds checkpoints,
resume, Ctrl-C handling and more options). Run:

    python scripts/train_fashion_mnist.py [--epochs 35] [--out runs/script]
"""

import argparse
import json
from pathlib import Path

import numpy as np

import nnscratch as nn
from nnscratch import plots
from nnscratch.atomic import atomic_write
from nnscratch.cli import non_negative_int, path_name, positive_int
from nnscratch.metrics import classification_report, confusion_matrix, format_report

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--epochs", type=positive_int, default=35, help="epochs to train (default 35)")
parser.add_argument("--seed", type=non_negative_int, default=0,
                    help="seed of the one generator: split, init, shuffling, dropout (default 0)")
parser.add_argument("--out", type=path_name, default=Path("runs/script"),
                    help="output directory (default runs/script)")
args = parser.parse_args()
# Before any long work: never overwrite a finished run, and fail now if --out is unusable.
if any((args.out / name).exists() for name in ("model.npz", "checkpoint.npz")):
    parser.error(f"--out {args.out} already holds a run; choose another --out")
try:
    args.out.mkdir(parents=True, exist_ok=True)
except OSError as exc:
    parser.error(f"--out {args.out}: {exc.strerror}")

# 1. Data: verified uint8 arrays; they stay uint8 and are scaled per batch.
(x_full, y_full), (x_test, y_test) = nn.load_fashion_mnist()

# 2. One generator for everything random: the split, the weights, shuffling, dropout.
rng = np.random.default_rng(args.seed)
perm = rng.permutation(len(x_full))
val, train = np.sort(perm[:5000]), np.sort(perm[5000:])
x_train, y_train, x_val, y_val = x_full[train], y_full[train], x_full[val], y_full[val]

# 3. The model: 784 -> 1024 -> 10 with ReLU and dropout 0.3 (the default recipe).
model = nn.Sequential(
    nn.Flatten(),
    nn.Dense(784, 1024), nn.ReLU(), nn.Dropout(0.3),
    nn.Dense(1024, 10),
    seed=rng,
)
optimizer = nn.Adam(model.parameters(), lr=1e-3)

# 4. Train; the validation split picks the epoch whose weights we keep.
history = model.fit(x_train, y_train, optimizer=optimizer, epochs=args.epochs,
                    batch_size=256, validation_data=(x_val, y_val),
                    lr_schedule="cosine", warmup_epochs=1, restore_best=True)

# 5. The test set, once.
test = model.evaluate(x_test, y_test)
pred = model.predict(x_test).argmax(axis=1)
report = classification_report(y_test, pred, list(nn.CLASS_NAMES))
print(format_report(report))
print(f"test accuracy {test['accuracy']:.4f}")

# 6. Save, reload, check, and draw (every file written whole, or not at all).
nn.save(model, args.out / "model.npz", class_names=list(nn.CLASS_NAMES))
assert np.array_equal(nn.load(args.out / "model.npz").predict(x_test[:100]), model.predict(x_test[:100]))
cm = confusion_matrix(y_test, pred, 10)
metrics = json.dumps({"test": test, "per_class": report, "confusion_matrix": cm.tolist(),
                      "history": history}, indent=2)
atomic_write(args.out / "metrics.json", lambda handle: handle.write(metrics.encode()))
plots.plot_confusion_matrix(cm, list(nn.CLASS_NAMES), args.out / "confusion_matrix.png")
plots.plot_training_curves(history, args.out / "training_curves.png")
plots.plot_misclassified(x_test, y_test, pred, list(nn.CLASS_NAMES), args.out / "misclassified.png")
print(f"wrote {args.out}/model.npz, metrics.json and three plots")
