"""Runs the same Gated-SCNN weights on two Keras backends and compares the results.

    # 1. TensorFlow backend: build a small model, save weights, inputs and TF's results to DIR
    python scripts/cross_backend_check.py make DIR
    # 2. any other backend (CPU or GPU), e.g. JAX on a GPU machine without TensorFlow
    KERAS_BACKEND=jax python scripts/cross_backend_check.py check DIR

The layers and losses are written with ``keras.ops`` (TensorFlow only where tf.distribute
is involved), so the model and its four loss terms run unchanged on JAX. ``check`` is
the proof that they compute the same thing there: the in-graph Canny map must be
identical (it is integer arithmetic), the logits, edge map and loss terms must agree
within float32 tolerances. It prints a Markdown table and exits 1 on a mismatch.

Model: MobileNetV2 x0.35 regular stream, OS8, shape stream with gates and Canny, random
weights with BatchNorm statistics calibrated on the input (so every layer matters), on a
synthetic Cityscapes-layout street scene. The dual-task term runs without Gumbel noise
(its value does not depend on the noise anyway; only its gradient does).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

HEIGHT, WIDTH = 128, 256
MODEL = dict(backbone="mobilenetv2", output_stride=8, num_classes=19, mobilenet_alpha=0.35)
OUTPUTS = ("seg_logits", "edge", "edge_logits")


def _build():
    from gscnn_tf.config import ModelConfig
    from gscnn_tf.model import GatedSCNN

    return GatedSCNN(ModelConfig(**MODEL, sync_batchnorm=False))


def _loss():
    from gscnn_tf.losses import GSCNNLoss

    return GSCNNLoss(dual_task_gumbel_noise=False)


def _canny(model, image):
    canny = model.get_layer("canny")
    return np.asarray(canny(image))


def _calibrate_batchnorm(model, image, seed=0):
    """Random BN affines, then moving statistics := one training-mode pass's batch statistics."""
    import keras

    rng = np.random.default_rng(seed)
    bns = [l for l in model._flatten_layers(include_self=False) if isinstance(l, keras.layers.BatchNormalization)]
    for bn in bns:
        c = bn.gamma.shape[0]
        bn.gamma.assign(rng.uniform(0.5, 1.5, c).astype("float32"))
        bn.beta.assign(rng.normal(0, 0.2, c).astype("float32"))
        bn.momentum = 0.0
    model(image, training=True)
    for bn in bns:
        bn.momentum = 0.9
    return len(bns)


def make(directory: str) -> None:
    import keras

    from gscnn_tf.data import labels as cs_labels
    from gscnn_tf.data.scene import render_scene
    from gscnn_tf.losses import boundary_map

    if keras.backend.backend() != "tensorflow":
        raise SystemExit("make: run with the TensorFlow backend (the reference side)")
    keras.utils.set_random_seed(0)
    scene = render_scene(HEIGHT, WIDTH, np.random.default_rng(0))
    image = scene.image.astype("float32")[None]  # RGB 0..255: the model normalises it
    label = cs_labels.label_ids_to_train_ids(scene.label_ids).astype("int32")[None]
    boundary = np.asarray(boundary_map(label), dtype="float32")

    model = _build()
    _calibrate_batchnorm(model, image)
    outputs = {k: np.asarray(v) for k, v in model(image, training=False).items()}
    terms = {k: float(v) for k, v in _loss().terms({"label": label, "boundary": boundary}, outputs).items()}

    os.makedirs(directory, exist_ok=True)
    model.save_weights(os.path.join(directory, "model.weights.h5"))
    np.savez_compressed(
        os.path.join(directory, "reference.npz"), image=image, label=label, boundary=boundary,
        canny=_canny(model, image), **outputs,
    )
    with open(os.path.join(directory, "reference.json"), "w") as f:
        json.dump({"backend": "tensorflow", "terms": terms, "model": MODEL}, f, indent=1)
    print(f"reference written to {directory}: terms {terms}")


def _rel_err(a, b):
    return float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), 1e-12))


def check(directory: str, rel_tol: float = 1e-3, loss_rel_tol: float = 1e-3) -> int:
    """Compares this backend's results with the reference; 0 when everything agrees.

    ``rel_tol`` bounds max |diff| / max |reference| per output: float32 sums in a different
    order (oneDNN vs XLA) give about 2.5e-4 on the logits, spread evenly over the image;
    a wrong layer gives O(1).
    """
    import keras

    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        # Compare float32 with float32: no TF32 matmuls/convolutions on Ampere+ GPUs.
        jax.config.update("jax_default_matmul_precision", "highest")
        device = jax.devices()[0].device_kind
    else:
        device = "cpu"
    ref = np.load(os.path.join(directory, "reference.npz"))
    with open(os.path.join(directory, "reference.json")) as f:
        ref_terms = json.load(f)["terms"]

    model = _build()
    model.load_weights(os.path.join(directory, "model.weights.h5"))
    start = time.perf_counter()
    outputs = {k: np.asarray(v) for k, v in model(ref["image"], training=False).items()}
    seconds = time.perf_counter() - start
    terms = {k: float(v) for k, v in _loss().terms({"label": ref["label"], "boundary": ref["boundary"]}, outputs).items()}
    canny = _canny(model, ref["image"])

    rows, failed = [], False

    def row(name, value, limit, ok):
        nonlocal failed
        failed |= not ok
        rows.append(f"| {name} | {value} | {limit} | {'ok' if ok else 'MISMATCH'} |")

    differing = int(np.sum(canny != ref["canny"]))
    row("Canny edge pixels differing", f"{differing} of {canny.size} ({int(ref['canny'].sum())} edges)", "0", differing == 0)
    for name in OUTPUTS:
        err = _rel_err(outputs[name], ref[name])
        row(f"{name}: max abs diff / max abs", f"{err:.2e}", f"{rel_tol:g}", err <= rel_tol)
    agree = float(np.mean(outputs["seg_logits"].argmax(-1) == ref["seg_logits"].argmax(-1)))
    row("argmax class agreement", f"{agree:.5f}", ">= 0.999", agree >= 0.999)
    for name, value in ref_terms.items():
        err = abs(terms[name] - value) / max(abs(value), 1e-6)
        row(f"loss term {name} ({value:.5f})", f"{terms[name]:.5f} (rel {err:.1e})", f"{loss_rel_tol:g}", err <= loss_rel_tol)

    tf_state = "TensorFlow imported" if "tensorflow" in sys.modules else "TensorFlow not imported"
    print(f"\nKeras backend {backend} on {device} vs TensorFlow reference ({tf_state}; first call {seconds:.1f} s)\n")
    print("| check | value | limit | |\n|---|---|---|---|")
    print("\n".join(rows))
    return 1 if failed else 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=("make", "check"), help="make: write the TF reference; check: compare against it")
    parser.add_argument("directory", help="folder holding model.weights.h5, reference.npz and reference.json")
    args = parser.parse_args(argv)
    if args.mode == "make":
        make(args.directory)
        return 0
    return check(args.directory)


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    sys.exit(main())
