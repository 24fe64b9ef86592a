"""Time to write a serving SavedModel with and without the custom gradients, side by side.

    CUDA_VISIBLE_DEVICES= .venv/bin/python bench/bench_savedmodel_write.py [--config configs/cpu_demo.yaml] [--reps 3]

Builds the model of ``--config`` (random weights) and its serving module once, traces both
signatures, then writes the SavedModel ``--reps`` times each way, alternating:
``experimental_custom_gradients=True`` (TensorFlow's default, what exports did before) and
``False`` (what ``export_saved_model`` does: serving never differentiates). Prints the median
seconds, the ratio and the size of ``saved_model.pb``, and writes them as JSON to ``--out``.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/cpu_demo.yaml", help="experiment YAML of the model to export")
    parser.add_argument("--reps", type=int, default=3, help="writes per setting (alternating)")
    parser.add_argument("--out", help="also write the result as JSON here")
    args = parser.parse_args(argv)

    from gscnn_tf.utils.quiet_tensorflow import import_tensorflow_quietly

    tf = import_tensorflow_quietly()
    from gscnn_tf.config import load_config
    from gscnn_tf.export.saved_model import DEFAULT_SIGNATURE, IMAGE_TENSOR_SIGNATURE, build_serving_module
    from gscnn_tf.model import GatedSCNN

    config = load_config(args.config, ["model.pretrained=null"])
    module = build_serving_module(GatedSCNN(config.model, config.loss, config.dataset), config)
    signatures = {DEFAULT_SIGNATURE: module.serve_bytes.get_concrete_function(),
                  IMAGE_TENSOR_SIGNATURE: module.serve_images.get_concrete_function()}
    seconds, pb_bytes = {True: [], False: []}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.reps):
            for gradients in (True, False):
                path = os.path.join(tmp, f"{gradients}_{rep}")
                start = time.perf_counter()
                tf.saved_model.save(module, path, signatures=signatures,
                                    options=tf.saved_model.SaveOptions(experimental_custom_gradients=gradients))
                seconds[gradients].append(time.perf_counter() - start)
                pb_bytes[gradients] = os.path.getsize(os.path.join(path, "saved_model.pb"))
    result = {"config": args.config, "reps": args.reps,
              "with_gradients_s": statistics.median(seconds[True]),
              "without_gradients_s": statistics.median(seconds[False]),
              "with_gradients_pb_bytes": pb_bytes[True], "without_gradients_pb_bytes": pb_bytes[False]}
    result["speed_up"] = result["with_gradients_s"] / result["without_gradients_s"]
    print(f"write with custom gradients {result['with_gradients_s']:.2f} s, without {result['without_gradients_s']:.2f} s "
          f"({result['speed_up']:.2f}x); saved_model.pb {pb_bytes[True] / 1e6:.2f} MB -> {pb_bytes[False] / 1e6:.2f} MB")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
