"""Peak memory of the serving graph on CPU, per megapixel served, with and without chunking.

    CUDA_VISIBLE_DEVICES= .venv/bin/python bench/bench_serving_memory.py [--config configs/cpu_demo.yaml]
        [--sizes 512x1024 1024x1024 1024x2048] [--batch 4x1024x1024] [--mixed 4x1024x1024]

Each case runs in a fresh process: build the model (random weights: memory does not depend
on their values), build the serving module, call ``serve_bytes`` once on a 64x64 image
(tracing, allocator warm-up), then on the measured request. It reports the growth of the
process's peak RSS (``ru_maxrss``) over the warm process, in MB and in MB per megapixel of
the request. Same-size batches run once with the whole batch in one network call
(``chunk_pixels=0``, what exports did before) and once with the default chunking;
mixed-size batches run one image per network call. ``--bombs`` times the default limits
refusing small files that decode to huge images (best of 3, in-process, after warm-up).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

REPO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")

CHILD = r"""
import json, os, resource, sys, time
sys.path.insert(0, sys.argv[1])
from gscnn_tf.utils.quiet_tensorflow import import_tensorflow_quietly
tf = import_tensorflow_quietly()
from gscnn_tf.config import load_config
from gscnn_tf.export import saved_model as sm
from gscnn_tf.export import warmup
from gscnn_tf.model import GatedSCNN
config_path, batch, h, w, chunk = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
mixed = batch < 0  # -B: B images of slightly different sizes around HxW (run one at a time)
batch = abs(batch)
sizes = [(h - 8 * (i % 2), w - 8 * (i // 2 % 2)) if mixed else (h, w) for i in range(batch)]
config = load_config(config_path, ["model.pretrained=null"])
model = GatedSCNN(config.model)
module = sm.build_serving_module(model, config, chunk_pixels=chunk)
module.serve_bytes(tf.constant([warmup.encode(warmup.synthetic_image(64, 64))]))
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
data = tf.constant([warmup.encode(warmup.synthetic_image(hh, ww, seed=i)) for i, (hh, ww) in enumerate(sizes)])
t = time.perf_counter()
out = module.serve_bytes(data)
seconds = time.perf_counter() - t
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"base_mb": base / 1024, "peak_mb": peak / 1024, "seconds": seconds,
                  "shape": list(out["classes"].shape)}))
"""


BOMBS = r"""
import json, resource, sys, time
sys.path.insert(0, sys.argv[1])
import numpy as np
from gscnn_tf.utils.quiet_tensorflow import import_tensorflow_quietly
tf = import_tensorflow_quietly()
from gscnn_tf.config import load_config
from gscnn_tf.export import saved_model as sm
from gscnn_tf.export import warmup
from gscnn_tf.model import GatedSCNN
config = load_config(sys.argv[2], ["model.pretrained=null"])
module = sm.build_serving_module(GatedSCNN(config.model), config, max_pixels=sm.DEFAULT_MAX_PIXELS,
                                 max_request_pixels=sm.DEFAULT_MAX_REQUEST_PIXELS)
module.serve_bytes(tf.constant([warmup.encode(warmup.synthetic_image(64, 64))]))
bombs = {"8000x8000 PNG": tf.io.encode_png(np.zeros((8000, 8000, 3), np.uint8)).numpy(),
         "4096x4096 JPEG": tf.io.encode_jpeg(np.zeros((4096, 4096, 3), np.uint8), quality=90).numpy()}
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # after making the files (the pixels were freed)
for name, data in bombs.items():
    best = 1e9
    for _ in range(3):
        t = time.perf_counter()
        try:
            module.serve_bytes(tf.constant([data]))
            raise SystemExit(name + " was served")
        except tf.errors.InvalidArgumentError as exc:
            best = min(best, time.perf_counter() - t)
            message = [line for line in exc.message.splitlines() if "pixels" in line][0].strip()[-100:]
    grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
    print(json.dumps({"name": name, "kb": len(data) / 1024, "ms": best * 1e3, "grown_mb": grown, "msg": message}))
"""


def bombs(config):
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    res = subprocess.run([sys.executable, "-c", BOMBS, REPO, config], capture_output=True, text=True, env=env)
    if res.returncode != 0:
        raise SystemExit(res.stderr[-2000:])
    for line in res.stdout.strip().splitlines():
        r = json.loads(line)
        print(f"refused {r['name']} ({r['kb']:.0f} KB) in {r['ms']:.1f} ms, peak RSS +{r['grown_mb']:.0f} MB: "
              f"...{r['msg']}", flush=True)


def _size(text):
    parts = [int(v) for v in text.lower().replace("m", "-").split("x")]
    return parts if len(parts) == 3 else [1] + parts


def run(config, batch, h, w, chunk):
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    res = subprocess.run([sys.executable, "-c", CHILD, REPO, config, str(batch), str(h), str(w), str(chunk)],
                         capture_output=True, text=True, env=env)
    if res.returncode != 0:
        raise SystemExit(res.stderr[-2000:])
    r = json.loads(res.stdout.strip().splitlines()[-1])
    grown = r["peak_mb"] - r["base_mb"]
    mp = abs(batch) * h * w / 1e6
    label = f"{abs(batch)}x{h}x{w}" + (" mixed" if batch < 0 else "")
    print(f"{os.path.basename(config):34s} {label:18s} chunk={chunk:<8d} +{grown:7.0f} MB  {grown / mp:6.0f} MB/MP  "
          f"(warm process {r['base_mb']:.0f} MB, {r['seconds']:.1f} s)", flush=True)
    return grown


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=os.path.join(REPO, "configs", "cpu_demo.yaml"), help="experiment YAML")
    p.add_argument("--sizes", nargs="*", default=["512x1024", "1024x1024", "1024x2048"],
                   help="single-image requests HxW")
    p.add_argument("--batch", nargs="*", default=["4x1024x1024"], help="same-size batches BxHxW")
    p.add_argument("--mixed", nargs="*", default=["4x1024x1024"],
                   help="mixed-size batches BxHxW (sizes HxW minus 0/8 pixels: one image per network call)")
    p.add_argument("--chunk-pixels", type=int, default=1024 * 2048, help="chunk size of the chunked runs")
    p.add_argument("--bombs", action="store_true",
                   help="also time the default limits refusing an 8000x8000 PNG and a 4096x4096 JPEG")
    args = p.parse_args()
    if args.bombs:
        bombs(args.config)
    for text in args.sizes:
        b, h, w = _size(text)
        run(args.config, b, h, w, args.chunk_pixels)
    for text in args.batch:
        b, h, w = _size(text)
        run(args.config, b, h, w, 0)
        run(args.config, b, h, w, args.chunk_pixels)
    for text in args.mixed:
        b, h, w = _size(text)
        run(args.config, -b, h, w, args.chunk_pixels)


if __name__ == "__main__":
    main()
