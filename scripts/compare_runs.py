"""Plot the validation accuracy of several training runs on one chart.

    python scripts/compare_runs.py runs/a runs/b ... --out compare.png

Each argument is an output directory of `nnscratch train`; its history comes from
metrics.json, or from checkpoint.npz for a run that did not finish. The legend
shows each run's hidden sizes, dropout, epochs and augmentation.
"""

import argparse
import json
import sys
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


parser = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("runs", type=Path, nargs="+", metavar="RUN_DIR",
                    help="output folders of nnscratch train (finished or not)")
parser.add_argument("--out", type=Path, default=Path("compare.png"),
                    help="the chart to write, a PNG (default compare.png)")
args = parser.parse_args()
runs = []
for run in args.runs:
    try:
        runs.append((run, *history_and_config(run)))
    except Exception as exc:  # noqa: BLE001 - any unreadable run: one line, not a traceback
        sys.exit(f"compare_runs: error: {run}: not a readable nnscratch run "
                 f"(no metrics.json or checkpoint.npz: {exc})")

figure = Figure(figsize=(11, 6), dpi=100)
FigureCanvasAgg(figure)
axes = figure.add_subplot()
palette = colormaps["tab20"] if len(runs) > 10 else colormaps["tab10"]  # no repeated colours
lowest = 86.0
for i, (_run, history, config) in enumerate(runs):
    values = [100 * v for v in history["val_accuracy"]]
    lowest = min(lowest, min(values, default=lowest))
    # (a marker, so that a one-epoch run, a single point, shows too)
    axes.plot(range(1, len(values) + 1), values, color=palette(i % palette.N), marker=".",
              label=f"{label(config)}: best {max(values):.2f}%")
axes.set_xlabel("epoch")
axes.set_ylabel("validation accuracy (%)")
# From 86% (where the recipes' curves differ), lower if a run's curve goes lower.
axes.set_ylim(max(0.0, lowest - 0.5), 92.5)
axes.grid(alpha=0.3)
axes.legend(fontsize=8, loc="lower right")
sizes = sorted({config["val_size"] for _, _, config in runs})
axes.set_title("Validation accuracy per epoch (held-out training images: "
               f"{', '.join(map(str, sizes))})")
figure.tight_layout()
figure.savefig(args.out)
print(f"wrote {args.out}")
