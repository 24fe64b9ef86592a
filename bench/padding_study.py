"""Crop-padding study: trains one config with each ``data.pad_color`` setting and several seeds
at one fixed budget, then tabulates the final val mIoU (mean and sample standard deviation).

Padding only happens where a scaled image is smaller than the crop, so give the study a scale
range that reaches below ``crop / image`` (the CamVid study in docs/RESULTS.md: 192x256 crops of
360x480 frames, scales 0.25-1.0, so about 40 % of the crops are partly padding).

    python bench/padding_study.py --config configs/camvid_deeplabv3plus.yaml --out runs/padding_study \\
        --set data.min_scale=0.25 --set data.max_scale=1.0 --set train.epochs=2 --set train.validation_freq=2

Each run is ``OUT/<setting>_seed<N>`` (``train_keras.py --model-dir``), so a rerun skips finished
runs and resumes an interrupted one. The table goes to ``OUT/padding_study.md`` and stdout.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from typing import Dict, List

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from plot_learning_curves import read_curve  # noqa: E402  (a sibling script, not a package)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_dir(out: str, setting: str, seed: int) -> str:
    return os.path.join(out, f"{setting}_seed{seed}")


def final_val_miou(path: str) -> float:
    """The last validated epoch's val mIoU of a run directory."""
    epochs, values = read_curve(path, "val_miou")
    if not values:
        raise SystemExit(f"padding_study: {path}: the training log has no val_miou (did the run validate?)")
    return values[-1]


def summarise(results: Dict[str, List[float]], seeds: List[int]) -> str:
    """A Markdown table: one row per setting, val mIoU (%) per seed, mean and sample std."""
    lines = ["| data.pad_color | " + " | ".join(f"seed {s}" for s in seeds) + " | mean | std |",
             "|---|" + "---|" * (len(seeds) + 2)]
    for setting, values in results.items():
        pct = [100.0 * v for v in values]
        std = statistics.stdev(pct) if len(pct) > 1 else float("nan")
        lines.append(f"| {setting} | " + " | ".join(f"{v:.1f}" for v in pct)
                     + f" | **{statistics.fmean(pct):.1f}** | {std:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--config", required=True, help="experiment YAML trained in every run")
    p.add_argument("--out", required=True, help="folder for the runs and padding_study.md")
    p.add_argument("--settings", nargs="+", default=["black", "mean"],
                   help="data.pad_color values to compare (black, mean or r,g,b)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="train.seed values, one run each")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="extra train_keras.py overrides shared by every run (the fixed budget)")
    args = p.parse_args(argv)
    results: Dict[str, List[float]] = {}
    for setting in args.settings:
        value = f"[{setting}]" if "," in setting else setting
        for seed in args.seeds:
            cmd = [sys.executable, os.path.join(REPO, "train_keras.py"), "--config", args.config,
                   "--model-dir", run_dir(args.out, setting, seed),
                   "--set", f"data.pad_color={value}", "--set", f"train.seed={seed}"]
            for kv in args.set:
                cmd += ["--set", kv]
            print(f"padding_study: {setting}, seed {seed}", flush=True)
            rc = subprocess.call(cmd)
            if rc != 0:
                print(f"padding_study: the run {run_dir(args.out, setting, seed)} exited with status {rc}",
                      file=sys.stderr)
                return rc
            results.setdefault(setting, []).append(final_val_miou(run_dir(args.out, setting, seed)))
    table = summarise(results, args.seeds)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "padding_study.md"), "w", encoding="utf-8") as f:
        f.write(table)
    print(table, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
