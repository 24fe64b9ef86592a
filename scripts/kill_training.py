"""SIGKILLs ``train_keras.py`` at random moments, reruns it each time, and checks the run directory.

After ``--kills`` kills (each a SIGKILL at a random delay while the run was still going)
the run is let finish, then checked: the summary reaches the schedule's last step, the
metrics CSV has exactly one row per epoch, the best value kept in ``backup/latest.json``
is the CSV's best ``val_miou``, every checkpoint holds finite weights and no temporary
file is left. Prints one JSON line with the counts (README, "Reliability").

    python scripts/kill_training.py --config tiny.yaml --model-dir /tmp/killed --kills 15
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import random
import signal
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _start(args):
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.Popen([sys.executable, os.path.join(REPO, "train_keras.py"), "--config", args.config,
                             "--model-dir", args.model_dir, "--quiet"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def check(run: str) -> dict:
    """The run directory's consistency after the final run (raises AssertionError)."""
    from gscnn_tf.training.checkpoints import load_inference_model, non_finite_weights

    with open(os.path.join(run, "train_summary.json")) as f:
        summary = json.load(f)
    with open(os.path.join(run, "training_log.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    epochs = [int(r["epoch"]) for r in rows]
    assert epochs == list(range(summary["epochs"])), f"CSV epochs {epochs}"
    with open(os.path.join(run, "backup", "latest.json")) as f:
        best = json.load(f)["best"]
    best_csv = max(float(r["val_miou"]) for r in rows)
    assert abs(best["value"] - best_csv) < 1e-9, (best, best_csv)
    for name in ("checkpoints/best.weights.h5", "checkpoints/last.weights.h5", "model.keras"):
        model, _ = load_inference_model(os.path.join(run, name))
        assert not non_finite_weights(model), name
    temps = [os.path.join(r, n) for r, ds, fs in os.walk(run) for n in ds + fs if ".tmp" in n]
    assert not temps, temps
    return {"global_step": summary["global_step"], "csv_rows": len(rows), "best_val_miou": best["value"],
            "best_epoch": best["epoch"]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True, help="training config (a small one: each rerun starts TensorFlow)")
    p.add_argument("--model-dir", required=True, help="run directory (must not exist)")
    p.add_argument("--kills", type=int, default=10, help="number of SIGKILLs of a running training (default 10)")
    p.add_argument("--min-delay", type=float, default=8.0, help="earliest kill after start, seconds (default 8)")
    p.add_argument("--max-delay", type=float, default=30.0, help="latest kill after start, seconds (default 30)")
    p.add_argument("--seed", type=int, default=0, help="seed of the kill delays")
    args = p.parse_args(argv)
    if os.path.exists(args.model_dir):
        p.error(f"{args.model_dir} exists; give a new run directory")
    rng = random.Random(args.seed)
    kills, finished_early, steps = 0, 0, []
    while kills < args.kills:
        proc = _start(args)
        delay = rng.uniform(args.min_delay, args.max_delay)
        try:
            proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills += 1
            pointer = os.path.join(args.model_dir, "backup", "latest.json")
            if os.path.exists(pointer):
                with open(pointer) as f:
                    steps.append(json.load(f)["global_step"])
            continue
        if proc.returncode != 0:
            print(proc.stderr.read()[-3000:], file=sys.stderr)
            return 1
        finished_early += 1  # the run finished before the kill: start again from a new directory
        print(json.dumps({"note": "run finished before its kill; raise --kills or lower --max-delay"}))
        break
    started = time.time()
    proc = _start(args)
    _, err = proc.communicate()
    if proc.returncode != 0:
        print(err[-3000:], file=sys.stderr)
        return 1
    result = check(args.model_dir)
    result.update(kills=kills, backup_steps_at_kills=steps, final_run_seconds=round(time.time() - started, 1))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
