"""Finding and loading trained models: one function every consumer (evaluate, export, predict) uses.

A training run directory (``train.model_dir``) holds::

    config.yaml                       the resolved ExperimentConfig
    checkpoints/best.weights.h5       GatedSCNN weights with the best validation mIoU
    checkpoints/last.weights.h5       GatedSCNN weights after the last epoch
    model.keras                       the final GatedSCNN (config, weights, compile state)
    backup/                           step-exact resume state + best value (training/callbacks.py)
    logs/                             TensorBoard;  training_log.csv: per-epoch metrics
"""
from __future__ import annotations

import os
import re
from typing import Optional

import keras

from gscnn_tf.config import ExperimentConfig, load_config

CONFIG_NAME = "config.yaml"
BEST_WEIGHTS = os.path.join("checkpoints", "best.weights.h5")
LAST_WEIGHTS = os.path.join("checkpoints", "last.weights.h5")
FINAL_MODEL = "model.keras"


class CheckpointError(ValueError):
    """A checkpoint path does not exist or is not something we can load."""


def non_finite_weights(model, extra_variables=()) -> list:
    """Paths of the floating-point variables of ``model`` (and ``extra_variables``, e.g. an
    optimizer's) that hold a NaN or an infinity; empty when all are finite.

    Reduced on the variables' own device, so only one boolean per variable is copied.
    Training checks the model and optimizer before every backup and checkpoint write and
    the model before ``model.keras``; export refuses a model for which it is not empty.
    """
    bad = []
    for variable in list(model.weights) + list(extra_variables):
        if not keras.backend.is_float_dtype(variable.dtype):
            continue
        if not bool(keras.ops.all(keras.ops.isfinite(variable))):
            bad.append(getattr(variable, "path", None) or variable.name)
    return bad


def resolve_checkpoint(path: str) -> str:
    """A run directory -> its best weights, else last weights, else model.keras; files as they are."""
    if os.path.isdir(path):
        for name in (BEST_WEIGHTS, LAST_WEIGHTS, FINAL_MODEL):
            candidate = os.path.join(path, name)
            if os.path.isfile(candidate):
                return candidate
        raise CheckpointError(f"{path}: run directory holds no {BEST_WEIGHTS}, {LAST_WEIGHTS} or {FINAL_MODEL}")
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: checkpoint not found")
    if not (path.endswith(".keras") or path.endswith(".weights.h5")):
        raise CheckpointError(f"{path}: expected a .keras model, a .weights.h5 file or a run directory")
    return path


def find_run_config(checkpoint_path: str) -> Optional[str]:
    """config.yaml of the run a checkpoint belongs to (its directory or the one above), if any."""
    directory = checkpoint_path if os.path.isdir(checkpoint_path) else os.path.dirname(os.path.abspath(checkpoint_path))
    for candidate in (directory, os.path.dirname(directory)):
        path = os.path.join(candidate, CONFIG_NAME)
        if os.path.isfile(path):
            return path
    return None


def load_inference_model(path: str, config: Optional[ExperimentConfig] = None) -> tuple:
    """Loads a trained model for inference; returns ``(GatedSCNN, ExperimentConfig)``.

    ``config`` defaults to the run's saved config.yaml (required for weights files).
    """
    checkpoint = resolve_checkpoint(path)
    if config is None:
        config_path = find_run_config(path)
        config = load_config(config_path) if config_path else None
    if checkpoint.endswith(".keras"):
        from gscnn_tf.model import GatedSCNN  # also registers it (and its layers) for deserialisation

        model = keras.saving.load_model(checkpoint, compile=False)
        if isinstance(model, GatedSCNN):
            if config is None:
                config = ExperimentConfig(model=model.model_config, loss=model.loss_config,
                                          dataset=model.dataset_config)
        elif model.name == "gscnn" and model.input.name == "image":
            # A model.keras written before GatedSCNN existed: the bare network, which expects
            # normalised input. Its weights go into a GatedSCNN, which normalises for itself.
            if config is None:
                raise CheckpointError(f"{checkpoint}: a model file from an older version without a config.yaml "
                                      "next to it; pass --config")
            network = model
            model = GatedSCNN(config.model, config.loss, config.dataset)
            model.set_weights(network.get_weights())
        # Any other Keras model with the same contract (RGB 0..255 -> seg_logits, edge) is used as it is.
        return model, config if config is not None else ExperimentConfig()
    if config is None:
        raise CheckpointError(f"{checkpoint}: weights file without a config.yaml next to it; pass --config")
    from gscnn_tf.model import GatedSCNN

    model = GatedSCNN(config.model, config.loss, config.dataset)
    try:
        model.load_weights(checkpoint)
    except Exception as exc:  # noqa: BLE001 - re-raised with the file name and cause
        raise CheckpointError(f"{checkpoint}: weights do not fit the configured model ({_load_error(exc)})") from exc
    return model, config


def _load_error(exc: Exception) -> str:
    """Keras' load_weights error in one line: its first sentence and the first variable that
    does not fit (Keras prints the variable's whole value, hundreds of lines)."""
    text = str(exc).strip()
    first = text.splitlines()[0] if text else type(exc).__name__
    first = first.split(" Example error message")[0]
    shapes = re.search(r"variable\.shape=(\([^)]*\)), Received: value\.shape=(\([^)]*\))", text)
    path = re.search(r"<Variable path=([^,\s]+)", text)
    if shapes and path:
        return f"{first} e.g. {path.group(1)} is {shapes.group(1)} in the model, {shapes.group(2)} in the file"
    return first if len(first) <= 300 else first[:297] + "..."
