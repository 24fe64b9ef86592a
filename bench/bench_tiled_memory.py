"""Peak memory of whole-image vs tiled inference as the image grows (1, 4, 16 megapixels).

Each measurement runs in its own process: it loads the model (``--checkpoint``: a run
directory, a SavedModel or a ``.tflite`` / ``.onnx`` file), warms it up on one small image
(one tile for tiled inference), then predicts one random (H, W, 3) uint8 image of the given
size and reports its peak resident memory (``ru_maxrss``), the resident memory before that
image, and the wall time. Modes:

* ``whole``: the network on the whole image at once (``predict.py`` without ``--tile-size``);
* ``tiled``: :func:`gscnn_tf.prediction.files.predict_tiled`, ``--tile-size`` tiles overlapping
  by ``--tile-overlap`` pixels, probabilities blended one row of tiles at a time
  (``predict.py --tile-size``);
* ``file``: a LiteRT / ONNX file's runner, which always tiles at its export size.

    python bench/bench_tiled_memory.py --checkpoint runs/camvid_gscnn --modes whole tiled \\
        --megapixels 1 4 16 --out bench/results/tiled_memory_camvid.json

``--max-whole-gb`` skips a whole-image size whose peak, extrapolated linearly from the
smaller sizes, would exceed it (the machine's memory is shared). A Markdown table goes to
stdout, the JSON to ``--out``.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _rss_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def image_shape(megapixels: float) -> tuple:
    """A square-ish (H, W) of about ``megapixels`` million pixels, sides multiples of 8 (1 -> 1024x1024)."""
    side = int(round(math.sqrt(megapixels * 2 ** 20) / 8.0)) * 8
    return side, side


def _worker(path: str, mode: str, megapixels: float, tile: tuple, overlap: int, threads: int) -> dict:
    """Runs in a child process; see the module docstring."""
    from gscnn_tf.prediction.files import load_predictor, predict_tiled

    predictor = load_predictor(path, with_probabilities=(mode == "tiled"), num_threads=threads)
    rng = np.random.default_rng(0)
    warm = tile if mode == "tiled" else (64, 64)
    predictor(rng.integers(0, 256, (*warm, 3), dtype=np.uint8))
    height, width = image_shape(megapixels)
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    before = _rss_mb()
    start = time.perf_counter()
    out = predict_tiled(predictor, image, tile, overlap) if mode == "tiled" else predictor(image)
    seconds = time.perf_counter() - start
    assert out["classes"].shape == (height, width), out["classes"].shape
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux
    return {"mode": mode, "megapixels": megapixels, "height": height, "width": width, "rss_before_mb": before,
            "peak_mb": peak, "seconds": seconds}


def measure(path: str, mode: str, megapixels: float, tile: tuple, overlap: int, threads: int) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", path, mode, str(megapixels),
           f"{tile[0]}x{tile[1]}", str(overlap), str(threads)]
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="2")
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env)
    if out.returncode != 0:
        why = "killed (out of memory?)" if out.returncode < 0 else out.stderr.strip().splitlines()[-1:]
        return {"mode": mode, "megapixels": megapixels, "error": str(why)}
    return json.loads(out.stdout.strip().splitlines()[-1])


def _size(text: str) -> tuple:
    h, w = text.lower().split("x")
    return int(h), int(w)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        path, mode, mp, tile, overlap, threads = argv[1:7]
        print(json.dumps(_worker(path, mode, float(mp), _size(tile), int(overlap), int(threads))))
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="run directory, SavedModel, or .tflite / .onnx file")
    p.add_argument("--modes", nargs="+", default=["whole", "tiled"], choices=["whole", "tiled", "file"],
                   help="whole image, tiled (blended), or a model file's own tiling runner")
    p.add_argument("--megapixels", type=float, nargs="+", default=[1, 4, 16], help="image sizes in 2^20 pixels")
    p.add_argument("--tile-size", type=_size, default=(512, 512), help="tiled mode: tile HxW (default 512x512)")
    p.add_argument("--tile-overlap", type=int, default=64, help="tiled mode: overlap in pixels (default 64)")
    p.add_argument("--threads", type=int, default=2, help="threads of a LiteRT / ONNX runtime (file mode)")
    p.add_argument("--max-whole-gb", type=float, default=16.0,
                   help="skip whole-image sizes whose extrapolated peak exceeds this many GB (default 16)")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    args = p.parse_args(argv)

    rows = []
    for mode in args.modes:
        done = []
        for mp in sorted(args.megapixels):
            if mode == "whole" and len(done) >= 2:  # linear fit of peak against megapixels
                (m0, p0), (m1, p1) = done[-2:]
                guess = p1 + (p1 - p0) / (m1 - m0) * (mp - m1)
                if guess > args.max_whole_gb * 1024:
                    rows.append({"mode": mode, "megapixels": mp, "skipped": f"extrapolated peak {guess / 1024:.1f} GB"})
                    print(f"# {mode} {mp} MP: skipped (extrapolated {guess / 1024:.1f} GB)", file=sys.stderr)
                    continue
            row = measure(args.checkpoint, mode, mp, args.tile_size, args.tile_overlap, args.threads)
            rows.append(row)
            if "peak_mb" in row:
                done.append((mp, row["peak_mb"]))
            print(f"# {row}", file=sys.stderr)
    result = {"checkpoint": args.checkpoint, "tile_size": list(args.tile_size), "tile_overlap": args.tile_overlap,
              "rows": rows, "date": time.strftime("%Y-%m-%d")}
    print("| mode | megapixels | image | peak RSS (MB) | peak / peak at smallest | RSS before image (MB) | seconds |")
    print("|---|---:|---|---:|---:|---:|---:|")
    for mode in args.modes:
        mine = [r for r in rows if r["mode"] == mode]
        first = next((r["peak_mb"] for r in mine if "peak_mb" in r), None)
        for r in mine:
            if "peak_mb" not in r:
                print(f"| {mode} | {r['megapixels']:g} | — | {r.get('skipped') or r.get('error')} | | | |")
                continue
            print(f"| {mode} | {r['megapixels']:g} | {r['height']}x{r['width']} | {r['peak_mb']:.0f} | "
                  f"{r['peak_mb'] / first:.2f}x | {r['rss_before_mb']:.0f} | {r['seconds']:.1f} |")
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
