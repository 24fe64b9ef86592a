"""Cost of the official Gated-SCNN model (WideResNet-38, official_compat) on CPU: time and memory.

    CUDA_VISIBLE_DEVICES= .venv/bin/python bench/bench_official_model.py [--size 1024x2048] [--repeats 2]

Builds the model from configs/cityscapes_wrn38_official.yaml with random weights (the cost
does not depend on the values), then times a batch-1 forward pass (graph mode, a
``tf.function``, after one warm-up call that includes tracing)
and reports the process's peak resident memory (``ru_maxrss``) after each phase.
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402


def _peak_gib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="1024x2048", help="input HxW (default 1024x2048, Cityscapes full size)")
    parser.add_argument("--repeats", type=int, default=2, help="timed forward passes after the warm-up (default 2)")
    args = parser.parse_args(argv)
    h, w = (int(v) for v in args.size.lower().split("x"))

    from gscnn_tf.config import load_config
    from gscnn_tf.model import GatedSCNN

    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    cfg = load_config(os.path.join(root, "configs", "cityscapes_wrn38_official.yaml"))
    start = time.perf_counter()
    model = GatedSCNN(cfg.model)
    print(f"build: {time.perf_counter() - start:.1f} s, {model.count_params():,} parameters, peak RSS {_peak_gib():.2f} GiB")

    forward = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
    x = tf.constant(np.random.RandomState(0).uniform(0, 255, size=(1, h, w, 3)).astype(np.float32))
    start = time.perf_counter()
    forward(x)["seg_logits"].numpy()
    print(f"{args.size}: first call (trace + run) {time.perf_counter() - start:.1f} s, peak RSS {_peak_gib():.2f} GiB")
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        forward(x)["seg_logits"].numpy()
        times.append(time.perf_counter() - start)
    print(f"{args.size}: forward {min(times):.1f} s (best of {args.repeats}; all {[round(t, 1) for t in times]}), "
          f"peak RSS {_peak_gib():.2f} GiB, {os.cpu_count()} CPUs visible")
    return 0


if __name__ == "__main__":
    sys.exit(main())
