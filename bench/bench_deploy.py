"""Deployment formats side by side: file size, latency per image and accuracy, in one run.

For each LiteRT / ONNX file in ``--files`` (written by ``export_savedmodel.py --format``) and the
SavedModel ``--saved-model`` (same checkpoint): the file size, the median latency of one image
at the files' input size with 1 and 2 threads (each measurement in its own process, so thread
settings and warm-up do not leak; XNNPACK is on for LiteRT), and, with ``--shards``, the
class-map agreement with the Keras model and the mIoU of each format over those images (a
held-out split), computed here from a confusion matrix in NumPy.

    python bench/bench_deploy.py --checkpoint runs/camvid_gscnn --saved-model runs/deploy/saved_model \\
        --files runs/deploy/*.tflite runs/deploy/*.onnx \\
        --shards 'data/camvid/tfrecords/val_fine-*.tfrecord' --out bench/results/deploy_camvid.json

The Markdown table goes to stdout (and ``--out`` gets the JSON).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _latency_worker(kind: str, path: str, threads: int, size, repeats: int) -> dict:
    """Runs in a child process: loads one model with ``threads`` threads and times ``repeats`` calls."""
    image = np.random.default_rng(0).integers(0, 256, (1, *size, 3), dtype=np.uint8)
    if kind == "saved_model":
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
        signature = tf.saved_model.load(path).signatures["serving_image_tensor"]
        x = tf.constant(image)

        def call():
            return {k: v.numpy() for k, v in signature(images=x).items()}
    else:
        from gscnn_tf.deploy.runtime import load_model_file

        model = load_model_file(path, num_threads=threads)

        def call():
            return model.run(image)
    for _ in range(3):
        call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return {"median_ms": 1000 * statistics.median(times), "min_ms": 1000 * min(times)}


def latency(kind: str, path: str, threads: int, size, repeats: int) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", kind, path, str(threads), f"{size[0]}x{size[1]}",
           str(repeats)]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    if out.returncode != 0:
        raise SystemExit(f"bench_deploy: latency of {path} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def miou(confusion: np.ndarray) -> float:
    tp = np.diag(confusion).astype(np.float64)
    union = confusion.sum(0) + confusion.sum(1) - tp
    valid = union > 0
    return float(np.mean(tp[valid] / union[valid]))


def accuracy(checkpoint: str, files: list, pattern: str, limit: int) -> dict:
    """Agreement with the Keras model and mIoU per format over the shards' images (void ignored)."""
    import tensorflow as tf

    from gscnn_tf.data.tfexample import decode_example, parse_example
    from gscnn_tf.deploy.runtime import load_model_file
    from gscnn_tf.training.checkpoints import load_inference_model

    model, config = load_inference_model(checkpoint, None)
    k = int(config.model.num_classes)
    deployed = {path: load_model_file(path, num_threads=2) for path in files}
    names = ["keras"] + files
    conf = {n: np.zeros((k, k), np.int64) for n in names}
    agree = {n: [0, 0] for n in files}
    records = tf.data.TFRecordDataset(sorted(tf.io.gfile.glob(pattern)))
    count = 0
    for record in records.take(limit):
        image, label = decode_example(parse_example(record))[:2]
        image = np.asarray(image, np.uint8)
        train_ids = np.asarray(label, np.int64)  # shards hold train ids (the ignore label is >= k)
        keep = train_ids < k
        keras_classes = np.argmax(np.asarray(model(image[None].astype(np.float32), training=False)["seg_logits"])[0], -1)
        preds = {"keras": keras_classes}
        for path, runner in deployed.items():
            preds[path] = runner.predict(image)["classes"].astype(np.int64)
            agree[path][0] += int((preds[path] == keras_classes).sum())
            agree[path][1] += keras_classes.size
        for n, p in preds.items():
            conf[n] += np.bincount(train_ids[keep] * k + p[keep], minlength=k * k).reshape(k, k)
        count += 1
    return {"images": count, "miou": {n: miou(c) for n, c in conf.items()},
            "agreement": {n: a / max(b, 1) for n, (a, b) in agree.items()}}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        kind, path, threads, size, repeats = argv[1:6]
        size = tuple(int(v) for v in size.split("x"))
        print(json.dumps(_latency_worker(kind, path, int(threads), size, int(repeats))))
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--files", nargs="+", required=True, help=".tflite / .onnx files of one checkpoint, one input size")
    p.add_argument("--saved-model", default=None, help="the same checkpoint's SavedModel version directory")
    p.add_argument("--checkpoint", default=None, help="the run directory (for --shards: the Keras reference)")
    p.add_argument("--shards", default=None, help="TFRecord glob of a held-out split for agreement and mIoU")
    p.add_argument("--max-images", type=int, default=1000, help="at most this many images from --shards")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="thread counts to time")
    p.add_argument("--repeats", type=int, default=10, help="timed calls per measurement (after 3 warm-up calls)")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    args = p.parse_args(argv)

    from gscnn_tf.deploy.runtime import read_metadata

    metas = {f: read_metadata(f) for f in args.files}
    sizes = {tuple(m["image_size"]) for m in metas.values()}
    if len(sizes) != 1:
        raise SystemExit(f"bench_deploy: the files have different input sizes {sorted(sizes)}")
    size = sizes.pop()
    rows = []
    models = ([("saved_model", args.saved_model)] if args.saved_model else []) + [
        (metas[f]["format"], f) for f in args.files]
    for kind, path in models:
        row = {"format": kind, "variant": metas[path]["quantization"] if path in metas else "float32", "path": path,
               "bytes": os.path.getsize(path) if os.path.isfile(path) else None}
        for threads in args.threads:
            row[f"ms_{threads}t"] = latency(kind, path, threads, size, args.repeats)["median_ms"]
        rows.append(row)
        print(f"# {kind} {row['variant']}: " + ", ".join(f"{k} {v:.1f}" for k, v in row.items() if k.startswith("ms_")),
              file=sys.stderr)
    result = {"image_size": list(size), "rows": rows, "date": time.strftime("%Y-%m-%d")}
    if args.shards:
        result["accuracy"] = accuracy(args.checkpoint, args.files, args.shards, args.max_images)
    saved = next((r for r in rows if r["format"] == "saved_model"), None)
    f32 = next((r for r in rows if r["format"] == "litert" and r["variant"] == "float32"), None)
    print("| format | variant | size (MB) | size / float32 | "
          + " | ".join(f"ms/image {t} thr" for t in args.threads)
          + (" | speed-up vs SavedModel (2 thr)" if saved else "")
          + (" | class agreement with Keras | mIoU" if args.shards else "") + " |")
    print("|---|---|---:|---:|" + "---:|" * len(args.threads) + ("---:|" if saved else "")
          + ("---:|---:|" if args.shards else ""))
    last_t = args.threads[-1]
    for r in rows:
        cells = [r["format"], r["variant"], "—" if r["bytes"] is None else f"{r['bytes'] / 1e6:.2f}",
                 f"{r['bytes'] / f32['bytes']:.3f}" if f32 and r["bytes"] else "—"]
        cells += [f"{r[f'ms_{t}t']:.0f}" for t in args.threads]
        if saved:
            cells.append(f"{saved[f'ms_{last_t}t'] / r[f'ms_{last_t}t']:.2f}x")
        if args.shards:
            acc = result["accuracy"]
            key = r["path"] if r["format"] != "saved_model" else "keras"
            cells.append("—" if key == "keras" else f"{100 * acc['agreement'][key]:.2f} %")
            cells.append(f"{100 * acc['miou'][key]:.2f}")
        print("| " + " | ".join(cells) + " |")
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
