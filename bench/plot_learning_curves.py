"""Learning curves: a metric per epoch of one or more training runs, as one PNG.

Reads each run directory's ``training_log.csv`` (written by ``train_keras.py``: one row per
epoch, validation columns empty on epochs without validation) and plots the chosen column
(default ``val_miou``, in %) against the epoch number (1-based, as the training log prints).

    python bench/plot_learning_curves.py runs/camvid_gscnn runs/camvid_deeplabv3plus \\
        --labels Gated-SCNN DeepLabV3+ --out runs/camvid_val_miou.png

Uses matplotlib, which the package's dependencies already install (cityscapesscripts needs it).
"""
from __future__ import annotations

import argparse
import csv
import math
import os
import sys
from typing import List, Optional, Tuple

LOG_NAME = "training_log.csv"


def read_curve(run_dir: str, column: str = "val_miou") -> Tuple[List[int], List[float]]:
    """``(epochs, values)`` of ``column`` in ``run_dir``'s training log; epochs are 1-based and
    rows where the column is empty or ``NA`` (Keras' CSVLogger for an epoch without validation) or
    not finite are left out."""
    path = os.path.join(run_dir, LOG_NAME) if os.path.isdir(run_dir) else run_dir
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except OSError as e:
        raise SystemExit(f"plot_learning_curves: {path}: cannot read the training log ({e.strerror})") from None
    if rows and column not in rows[0]:
        raise SystemExit(f"plot_learning_curves: {path}: no column {column!r} (has: {', '.join(rows[0])})")
    epochs, values = [], []
    for row in rows:
        text = (row.get(column) or "").strip()
        if text in ("", "NA"):
            continue
        value = float(text)
        if math.isfinite(value):
            epochs.append(int(row["epoch"]) + 1)
            values.append(value)
    return epochs, values


def plot(runs: List[str], out: str, column: str = "val_miou", labels: Optional[List[str]] = None,
         title: Optional[str] = None, percent: bool = True) -> None:
    """Writes the PNG ``out`` with one line per run (``labels`` default to the run directories' names)."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers and CI
    import matplotlib.pyplot as plt

    labels = labels or [os.path.basename(os.path.normpath(r)) for r in runs]
    if len(labels) != len(runs):
        raise SystemExit(f"plot_learning_curves: {len(labels)} labels for {len(runs)} runs")
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    for run, label in zip(runs, labels):
        epochs, values = read_curve(run, column)
        scale = 100.0 if percent else 1.0
        ax.plot(epochs, [v * scale for v in values], marker="o", markersize=3, label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"{column} (%)" if percent else column)
    ax.grid(True, alpha=0.3)
    ax.legend()
    if title:
        ax.set_title(title)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    tmp = out + ".tmp.png"
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("runs", nargs="+", help="run directories (or training_log.csv files)")
    p.add_argument("--out", required=True, help="PNG file to write")
    p.add_argument("--column", default="val_miou", help="training_log.csv column to plot")
    p.add_argument("--labels", nargs="+", help="legend entries, one per run (default: directory names)")
    p.add_argument("--title", help="plot title")
    p.add_argument("--raw", action="store_true", help="plot the column as is (default: x100, in %%)")
    args = p.parse_args(argv)
    plot(args.runs, args.out, args.column, args.labels, args.title, percent=not args.raw)
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
