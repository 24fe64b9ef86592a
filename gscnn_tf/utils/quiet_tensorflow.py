"""Importing TensorFlow without its start-up noise (oneDNN, CPU features, ``failed call to cuInit``).

TensorFlow's C++ runtime prints these through absl *before* ``TF_CPP_MIN_LOG_LEVEL`` takes
effect, so the import is done with file descriptor 2 captured and the known lines dropped.
Used by the command-line tools and by library code that imports TensorFlow in worker processes.
"""
from __future__ import annotations

import os
import re
import sys
import tempfile

# TensorFlow / XLA start-up lines that say nothing about the user's run.
_TF_NOISE = re.compile(
    r"^WARNING: All log messages before absl::InitializeLog\(\) is called"
    r"|^To enable the following instructions:"
    r"|^[IW]\d{4} [\d:. ]+\d+ \S+\.(cc|h):\d+\]"
    r"|^E\d{4} [\d:. ]+\d+ (cuda_\w+|cuda_platform|cuda_executor|cuda_diagnostics)\.cc:\d+\]"
)


# The start-up lines the last quiet import dropped, so that a tool run at DEBUG level can still show them.
HIDDEN_STARTUP_LINES: list = []


def import_tensorflow_quietly(verbose: bool = False):
    """Imports TensorFlow (and probes for GPUs, which prints cuInit's error) with its known
    start-up lines filtered out of stderr (kept in :data:`HIDDEN_STARTUP_LINES`); returns the
    module. No-op if already imported."""
    if "tensorflow" in sys.modules or verbose:
        import tensorflow as tf

        return tf
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            import tensorflow as tf

            tf.config.list_physical_devices("GPU")
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            text = capture.read().decode("utf-8", "replace")
            lines = [line for line in text.splitlines() if line.strip()]
            kept = [line for line in lines if not _TF_NOISE.search(line)]
            HIDDEN_STARTUP_LINES[:] = [line for line in lines if _TF_NOISE.search(line)]
            if kept:
                sys.stderr.write("\n".join(kept) + "\n")
    return tf


def keras_backend_name() -> str:
    """The backend Keras will load, read the way Keras reads it (``KERAS_BACKEND``, then
    ``keras.json`` in ``KERAS_HOME`` or ``~/.keras``), without importing Keras."""
    import json

    if os.environ.get("KERAS_BACKEND"):
        return os.environ["KERAS_BACKEND"]
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    try:
        with open(os.path.join(home, "keras.json"), encoding="utf-8") as f:
            return json.load(f).get("backend", "tensorflow")
    except (OSError, ValueError):
        return "tensorflow"
