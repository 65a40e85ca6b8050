"""Check nnscratch against PyTorch on the same numbers: loss, gradients and Adam(W) steps.

Builds the reference model (784-256-ReLU-128-ReLU-10, no dropout, so that both
frameworks compute the same function), copies nnscratch's initial weights into
PyTorch, and compares on real Fashion-MNIST images:

1. float64: the softmax cross-entropy of one batch and every parameter's gradient
   (nnscratch's layer-by-layer backward against PyTorch's autograd);
2. training, with and without weight decay: nnscratch's `fit` against
   `torch.optim.AdamW`, step by step on one fixed batch. In float64 the layer-by-layer
   path; in float32 what `fit` runs by default (the threaded step when it qualifies).

PyTorch is not a dependency of nnscratch: install it to run this
(`pip install torch==2.13.0`, as in benchmarks/requirements.txt). Run:

    python scripts/compare_with_pytorch.py [--steps 20] [--batch 512]

Exits 1 if a difference exceeds its tolerance (printed beside it).
"""

import argparse
import sys

import numpy as np

import nnscratch as nn
from nnscratch.cli import positive_int

try:
    import torch
except ImportError:
    sys.exit("compare_with_pytorch.py: PyTorch is not installed (pip install torch==2.13.0)")

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--steps", type=positive_int, default=20, help="Adam steps (default 20)")
parser.add_argument("--batch", type=positive_int, default=512, help="batch size (default 512)")
args = parser.parse_args()

(x, y), _ = nn.load_fashion_mnist()
x, y = x[:args.batch], y[:args.batch].astype(np.int64)
failed = []


def report(what: str, diff: float, tolerance: float) -> None:
    ok = diff <= tolerance
    print(f"  {what:<44} {diff:9.2e}  (tolerance {tolerance:.0e}) {'ok' if ok else 'FAIL'}")
    if not ok:
        failed.append(what)


def pair(dtype: str) -> tuple[nn.Sequential, "torch.nn.Sequential", list]:
    """An nnscratch model and a PyTorch copy of it, with the same weights."""
    model = nn.Sequential(nn.Flatten(), nn.Dense(784, 256), nn.ReLU(), nn.Dense(256, 128),
                          nn.ReLU(), nn.Dense(128, 10), seed=3, dtype=dtype)
    dense = [layer for layer in model.layers if isinstance(layer, nn.Dense)]
    linears = []
    for layer in dense:
        w, b = layer.params["weight"], layer.params["bias"]
        linear = torch.nn.Linear(*w.shape, dtype=getattr(torch, dtype))
        with torch.no_grad():  # PyTorch keeps W as (out, in): the transpose of ours
            linear.weight.copy_(torch.from_numpy(w.T.copy()))
            linear.bias.copy_(torch.from_numpy(b.copy()))
        linears.append(linear)
    twin = torch.nn.Sequential(torch.nn.Flatten(), linears[0], torch.nn.ReLU(), linears[1],
                               torch.nn.ReLU(), linears[2])
    return model, twin, list(zip(dense, linears))


def max_weight_diff(layers: list) -> float:
    return max(float(np.abs(d.params[name] - (lin.weight.detach().numpy().T if name == "weight"
                                              else lin.bias.detach().numpy())).max())
               for d, lin in layers for name in ("weight", "bias"))


print(f"PyTorch {torch.__version__}, nnscratch backend {nn.kernels.BACKEND}, batch {args.batch}")
print("1. float64 loss and gradients of one batch")
model, twin, layers = pair("float64")
pixels = x.astype(np.float64) / 255
loss = model.loss.forward(model.forward(pixels), y)
model.backward(model.loss.backward())
torch_loss = torch.nn.functional.cross_entropy(twin(torch.from_numpy(pixels)), torch.from_numpy(y))
torch_loss.backward()
report("loss", abs(loss - torch_loss.item()), 1e-12)
for i, (d, lin) in enumerate(layers):
    report(f"dL/dW of Dense {i}", float(np.abs(d.grads["weight"] - lin.weight.grad.numpy().T).max()),
           1e-14)
    report(f"dL/db of Dense {i}", float(np.abs(d.grads["bias"] - lin.bias.grad.numpy()).max()), 1e-14)

print(f"2. {args.steps} Adam(W) steps on that batch: nnscratch fit against torch.optim.AdamW")
for dtype, tolerance in (("float64", 1e-12), ("float32", 2e-5)):
    for weight_decay in (0.0, 1e-2):
        model, twin, layers = pair(dtype)
        optimizer = nn.Adam(model.parameters(), lr=1e-3, weight_decay=weight_decay)
        # One batch per epoch: shuffling only reorders its rows, and the mean loss is order-free.
        history = model.fit(x, y, optimizer=optimizer, epochs=args.steps, batch_size=args.batch,
                            verbose=0)
        torch_opt = torch.optim.AdamW(twin.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-8,
                                      weight_decay=weight_decay)
        inputs = torch.from_numpy(x.astype(dtype) / np.array(255, dtype))
        torch_losses = []
        for _ in range(args.steps):
            torch_opt.zero_grad()
            step_loss = torch.nn.functional.cross_entropy(twin(inputs), torch.from_numpy(y))
            torch_losses.append(step_loss.item())
            step_loss.backward()
            torch_opt.step()
        print(f" {dtype}, weight decay {weight_decay}: loss {history['loss'][0]:.6f} -> "
              f"{history['loss'][-1]:.6f} (PyTorch {torch_losses[0]:.6f} -> {torch_losses[-1]:.6f})")
        report("largest loss difference over the steps",
               float(np.abs(np.array(history["loss"]) - torch_losses).max()), tolerance)
        report("largest parameter difference at the end", max_weight_diff(layers), tolerance)

print("all within tolerance" if not failed else f"FAILED: {', '.join(failed)}")
sys.exit(1 if failed else 0)
