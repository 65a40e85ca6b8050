"""Plot the validation accuracy of several training runs on one chart.

    python scripts/compare_runs.py runs/a runs/b ... --out compare.png

Each argument is an output directory of `nnscratch train`; its history comes from
metrics.json, or from checkpoint.npz for a run that did not finish. The legend
shows each run's hidden sizes, dropout, epochs and augmentation.
"""

import argparse
import json
from pathlib import Path

from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from nnscratch.checkpoint import load_checkpoint


def history_and_config(run: Path) -> tuple[dict, dict]:
    if (run / "metrics.json").is_file():
        metrics = json.loads((run / "metrics.json").read_text())
        return metrics["history"], metrics["config"]
    config, meta = load_checkpoint(run / "checkpoint.npz")
    return meta["history"], config


def label(config: dict) -> str:
    text = f"{'-'.join(map(str, config['hidden']))} d{config['dropout']} {config['epochs']} ep"
    if config["weight_decay"]:
        text += f" wd{config['weight_decay']}"
    if config["augment"]:
        text += f" aug(shift {config['max_shift']}, flip {config['flip']})"
    return text


parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("runs", type=Path, nargs="+")
parser.add_argument("--out", type=Path, default=Path("compare.png"))
args = parser.parse_args()

figure = Figure(figsize=(11, 6), dpi=100)
FigureCanvasAgg(figure)
axes = figure.add_subplot()
palette = colormaps["tab20"] if len(args.runs) > 10 else colormaps["tab10"]  # no repeated colours
for i, run in enumerate(args.runs):
    history, config = history_and_config(run)
    values = [100 * v for v in history["val_accuracy"]]
    axes.plot(range(1, len(values) + 1), values, color=palette(i % palette.N),
              label=f"{label(config)}: best {max(values):.2f}%")
axes.set_xlabel("epoch")
axes.set_ylabel("validation accuracy (%)")
axes.set_ylim(86, 92.5)
axes.grid(alpha=0.3)
axes.legend(fontsize=8, loc="lower right")
axes.set_title("Validation accuracy per epoch of the recipes tried (5000 held-out training images)")
figure.tight_layout()
figure.savefig(args.out)
print(f"wrote {args.out}")
