"""A Numba cache directory that cannot be written must not stop nnscratch."""

import math
import os
import subprocess
import sys

PROGRAM = """
import numpy as np, nnscratch as nn
rng = np.random.default_rng(0)
x = rng.integers(0, 256, (64, 28, 28), dtype=np.uint8)
y = rng.integers(0, 10, 64)
model = nn.Sequential(nn.Flatten(), nn.Dense(784, 16), nn.ReLU(), nn.Dropout(0.2),
                      nn.Dense(16, 10), seed=0)
history = model.fit(x, y, epochs=1, batch_size=16, verbose=0)
print("loss", history["loss"][0])
"""


def test_training_works_when_the_numba_cache_dir_cannot_be_created():
    # /dev/null is a file, so nothing can be created below it, even by root.
    env = dict(os.environ, NUMBA_CACHE_DIR="/dev/null/nnscratch-numba-cache")
    result = subprocess.run([sys.executable, "-c", PROGRAM], capture_output=True, text=True,
                            env=env, timeout=600)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("loss ")
    assert math.isfinite(float(result.stdout.split()[1])), result.stdout
    assert "Traceback" not in result.stderr
