"""The model and its losses run unchanged on Keras' JAX backend and compute what TF computes.

The layers and losses are written with ``keras.ops`` so the network can run where TensorFlow
is not installed (the GPU checks in README ran on a JAX-only machine). These tests run
``scripts/cross_backend_check.py``: a TF-side reference (weights, input, outputs, loss
terms), then the same weights under ``KERAS_BACKEND=jax`` in a process that must not import
TensorFlow.
"""
import os
import subprocess
import sys

import numpy as np
import pytest

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
def test_jax_backend_reproduces_the_tensorflow_model_and_losses(reference):
    pytest.importorskip("jax")
    proc = _run("check", reference, "jax")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Keras backend jax on cpu" in proc.stdout
    assert "TensorFlow not imported" in proc.stdout  # layers and losses need no TF
    assert "| Canny edge pixels differing | 0 of" in proc.stdout
    assert "MISMATCH" not in proc.stdout


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
