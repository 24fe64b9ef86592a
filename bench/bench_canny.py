"""Times CannyEdges on 512x1024 images against cv2.Canny and reports agreement.

    CUDA_VISIBLE_DEVICES= .venv/bin/python bench/bench_canny.py [--batch 1] [--repeats 5]

Prints wall ms per image (best of N, graph mode, after warm-up) for the layer, for the layer
without hysteresis growth (max_hysteresis_iterations=0: everything but the loop) and for
cv2.Canny, their ratio, the same in process CPU time, and the pixel disagreement with cv2.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from gscnn_tf.layers.canny import CannyEdges  # noqa: E402


def _images(batch):
    import skimage.data

    from gscnn_tf.data.scene import render_scene

    pool = [
        render_scene(512, 1024, np.random.default_rng(0)).image,
        cv2.resize(skimage.data.astronaut(), (1024, 512), interpolation=cv2.INTER_LINEAR),
        cv2.resize(skimage.data.coffee(), (1024, 512), interpolation=cv2.INTER_LINEAR),
    ]
    return np.stack([pool[i % len(pool)] for i in range(batch)])


def _time(fn, repeats, clock=time.perf_counter):
    """Best of ``repeats`` (after a warm-up call) on ``clock``."""
    fn()  # warm-up / tracing
    best = float("inf")
    for _ in range(repeats):
        t = clock()
        fn()
        best = min(best, clock() - t)
    return best


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    imgs = _images(args.batch)
    x = tf.constant(imgs, tf.float32)
    full = CannyEdges()
    no_loop = CannyEdges(max_hysteresis_iterations=0)
    f_full = tf.function(lambda t: full(t))
    f_no_loop = tf.function(lambda t: no_loop(t))

    t_layer = _time(lambda: f_full(x).numpy(), args.repeats) / args.batch
    t_no_loop = _time(lambda: f_no_loop(x).numpy(), args.repeats) / args.batch
    t_cv = _time(lambda: [cv2.Canny(im, 10, 100) for im in imgs], args.repeats) / args.batch
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    t_cv1 = _time(lambda: [cv2.Canny(im, 10, 100) for im in imgs], args.repeats) / args.batch
    cv2.setNumThreads(threads)

    # CPU seconds over all threads: less sensitive than wall time to other jobs on a shared host.
    c_layer = _time(lambda: f_full(x).numpy(), args.repeats, time.process_time) / args.batch
    c_cv = _time(lambda: [cv2.Canny(im, 10, 100) for im in imgs], args.repeats, time.process_time) / args.batch

    out = f_full(x).numpy()[..., 0] > 0
    ref = np.stack([cv2.Canny(im, 10, 100) > 0 for im in imgs])
    print(f"device: {tf.config.list_logical_devices()[-1].name}  batch {args.batch}  image 512x1024")
    print(f"CannyEdges           {t_layer * 1e3:8.1f} ms/image")
    print(f"  without hysteresis {t_no_loop * 1e3:8.1f} ms/image")
    print(f"cv2.Canny            {t_cv * 1e3:8.1f} ms/image ({threads} threads)")
    print(f"cv2.Canny            {t_cv1 * 1e3:8.1f} ms/image (1 thread)")
    print(f"ratio layer/cv2      {t_layer / t_cv:8.1f}x ({t_layer / t_cv1:.1f}x vs 1 thread)")
    print(f"CPU time: CannyEdges {c_layer * 1e3:.1f} ms/image, cv2.Canny {c_cv * 1e3:.1f} ms/image, "
          f"ratio {c_layer / c_cv:.1f}x")
    print(f"pixels differing from cv2.Canny: {(out != ref).sum()} of {out.size}")


if __name__ == "__main__":
    main()
