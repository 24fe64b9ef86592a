"""The model and its losses run unchanged on Keras' JAX backend and compute what TF computes.

The layers and losses are written with ``keras.ops`` so the network can run where TensorFlow
is not installed (the GPU checks in README ran on a JAX-only machine).
``scripts/cross_backend_check.py`` makes a TF-side reference (weights, input, outputs, loss
terms) and checks the same weights under ``KERAS_BACKEND=jax`` in a process that must not
import TensorFlow: docs/BENCHMARKS.md runs both, and tests/test_docs.py asserts the JAX check
agrees (``_jax_matches_tensorflow``); here, that a tampered reference fails the check, and that
``fit``/``evaluate`` work under JAX's trainer.
"""
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import TINY_MODEL

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "cross_backend_check.py")


def _run(mode, directory, backend):
    env = dict(os.environ, KERAS_BACKEND=backend, CUDA_VISIBLE_DEVICES="", JAX_PLATFORMS="cpu")
    return subprocess.run(
        [sys.executable, SCRIPT, mode, str(directory)], env=env, capture_output=True, text=True, timeout=600
    )


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    directory = tmp_path_factory.mktemp("cross_backend")
    proc = _run("make", directory, "tensorflow")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return directory


@pytest.mark.slow
def test_check_reports_a_mismatch(reference, tmp_path):
    """A reference that differs (logits off by 1 %, one Canny pixel flipped) fails the check."""
    tampered = tmp_path / "tampered"
    tampered.mkdir()
    for name in ("model.weights.h5", "reference.json"):
        (tampered / name).write_bytes((reference / name).read_bytes())
    ref = dict(np.load(reference / "reference.npz"))
    ref["seg_logits"] = ref["seg_logits"] * 1.01
    ref["canny"] = ref["canny"].copy()
    ref["canny"].flat[0] = 1 - ref["canny"].flat[0]
    np.savez(tampered / "reference.npz", **ref)

    proc = _run("check", tampered, "tensorflow")
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = {line.split("|")[1].strip(): line for line in proc.stdout.splitlines() if line.startswith("| ")}
    assert "MISMATCH" in lines["Canny edge pixels differing"]
    assert "MISMATCH" in lines["seg_logits: max abs diff / max abs"]
    assert "MISMATCH" not in lines["edge: max abs diff / max abs"]  # untouched output still agrees


_JAX_FIT = r"""
import json, sys
import numpy as np
import keras
assert keras.backend.backend() == "jax"
from gscnn_tf.model import GatedSCNN
assert "tensorflow" not in sys.modules, "building GatedSCNN imported TensorFlow"
data = np.load(sys.argv[1])
x, y = data["images"], {"label": data["label"], "boundary": data["boundary"]}
keras.utils.set_random_seed(0)
model = GatedSCNN(json.loads(sys.argv[3]), {"gumbel_noise": False})
model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9))
history = model.fit(x, y, batch_size=2, epochs=1, shuffle=False, verbose=0).history
logs = model.evaluate(x, y, batch_size=2, verbose=0, return_dict=True)
model.save_weights(sys.argv[2])
print("LOGS " + json.dumps({"fit": {k: v[0] for k, v in history.items()}, "evaluate": logs,
                            "steps": int(model.optimizer.iterations)}))
"""


@pytest.mark.slow
def test_gated_scnn_fits_on_jax_and_evaluates_as_on_tensorflow(tmp_path):
    """compile()'s loss and metrics work under JAX's trainer too: fit there, then the same weights
    evaluate to the same loss terms on TensorFlow, and mIoU matches NumPy's on the predictions."""
    pytest.importorskip("jax")
    import json

    import keras

    from gscnn_tf.data.labels import label_ids_to_train_ids
    from gscnn_tf.data.scene import render_scene
    from gscnn_tf.losses import boundary_map
    from gscnn_tf.metrics.confusion import confusion_matrix, mean_iou
    from gscnn_tf.model import GatedSCNN

    rng = np.random.default_rng(0)
    scenes = [render_scene(64, 96, rng) for _ in range(4)]
    images = np.stack([s.image for s in scenes]).astype(np.uint8)
    label = np.stack([label_ids_to_train_ids(s.label_ids) for s in scenes]).astype(np.int32)
    boundary = np.asarray(boundary_map(label), np.float32)
    np.savez(tmp_path / "data.npz", images=images, label=label, boundary=boundary)
    config = dict(TINY_MODEL, num_classes=19, sync_batchnorm=False)
    weights = str(tmp_path / "jax.weights.h5")
    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
    proc = subprocess.run([sys.executable, "-c", _JAX_FIT, str(tmp_path / "data.npz"), weights, json.dumps(config)],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    jax_logs = json.loads(proc.stdout.split("LOGS ", 1)[1])
    assert jax_logs["steps"] == 2 and all(np.isfinite(v) for v in jax_logs["fit"].values())

    model = GatedSCNN(config, {"gumbel_noise": False})
    model.load_weights(weights)
    model.compile()
    tf_logs = model.evaluate(images, {"label": label, "boundary": boundary}, batch_size=2, verbose=0, return_dict=True)
    for key, value in jax_logs["evaluate"].items():
        assert tf_logs[key] == pytest.approx(value, rel=2e-3, abs=1e-5), key
    pred = keras.ops.convert_to_numpy(model(images)["seg_logits"]).argmax(-1)
    assert jax_logs["evaluate"]["miou"] == pytest.approx(mean_iou(confusion_matrix(label, pred, 19)), abs=1e-4)
