"""Training callbacks: step-level atomic backups, inference checkpoints, image summaries.

Keras' own ``BackupAndRestore`` resumes at the start of the last saved *epoch* and
overwrites its files in place; ``StepBackup`` resumes at the exact optimizer step and
writes each backup into a new directory that becomes current only once complete.
"""
from __future__ import annotations

import glob
import json
import logging
import os
import shutil

import keras
import numpy as np
import tensorflow as tf

from gscnn_tf.utils.atomic import atomic_directory, atomic_path, atomic_write_text

log = logging.getLogger(__name__)

BACKUP_POINTER = "latest.json"
BACKUP_WEIGHTS = "trainer.weights.h5"


def is_chief() -> bool:
    """True on the process that writes files (worker 0 / the chief under MultiWorker)."""
    resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    if not resolver.cluster_spec().as_dict():
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    return task_type == "chief" or (task_type == "worker" and task_id == 0 and "chief" not in resolver.cluster_spec().as_dict())


def save_weights_atomic(model: keras.Model, path: str) -> None:
    """``model.save_weights`` through a temporary ``*.weights.h5`` that is renamed when complete."""
    with atomic_path(path, suffix=".weights.h5") as tmp:
        model.save_weights(tmp)


def latest_backup(backup_dir: str):
    """(weights path, global step) of the newest complete backup, or None."""
    pointer = os.path.join(backup_dir, BACKUP_POINTER)
    if not os.path.isfile(pointer):
        return None
    with open(pointer, encoding="utf-8") as f:
        meta = json.load(f)
    weights = os.path.join(backup_dir, meta["dir"], BACKUP_WEIGHTS)
    if not os.path.isfile(weights):
        raise FileNotFoundError(f"{pointer}: names {weights}, which is missing; delete {backup_dir} to start afresh")
    return weights, int(meta["global_step"])


class StepBackup(keras.callbacks.Callback):
    """Saves trainer weights + optimizer state every ``save_freq`` steps (and each epoch end).

    Each backup goes to ``backup_dir/step-XXXXXXXX/`` (written to a temp dir, then
    renamed); ``latest.json`` is replaced atomically to point at it; older backups are
    removed. Resume with :func:`latest_backup` + ``trainer.load_weights``.
    """

    def __init__(self, backup_dir: str, save_freq="epoch", write: bool = True):
        super().__init__()
        self.backup_dir = backup_dir
        self.save_freq = save_freq
        self.write = write
        self._last_saved_step = -1

    def _global_step(self) -> int:
        return int(self.model.optimizer.iterations.numpy())

    def _save(self):
        step = self._global_step()
        if step == self._last_saved_step or not self.write:
            return
        name = f"step-{step:08d}"
        with atomic_directory(os.path.join(self.backup_dir, name), overwrite=True) as tmp:
            self.model.save_weights(os.path.join(tmp, BACKUP_WEIGHTS))
        atomic_write_text(
            os.path.join(self.backup_dir, BACKUP_POINTER), json.dumps({"dir": name, "global_step": step})
        )
        for old in glob.glob(os.path.join(self.backup_dir, "step-*")):
            if os.path.basename(old) != name:
                shutil.rmtree(old, ignore_errors=True)
        self._last_saved_step = step
        log.debug("backup written at step %d", step)

    def on_train_batch_end(self, batch, logs=None):
        if isinstance(self.save_freq, int) and self._global_step() % self.save_freq == 0:
            self._save()

    def on_epoch_end(self, epoch, logs=None):
        self._save()


class InferenceCheckpoint(keras.callbacks.Callback):
    """Writes the *inference network's* weights: ``last`` every epoch, ``best`` on a new best ``monitor``."""

    def __init__(self, network: keras.Model, best_path: str, last_path: str, monitor="val_miou", write=True):
        super().__init__()
        self.network = network
        self.best_path = best_path
        self.last_path = last_path
        self.monitor = monitor
        self.write = write
        self.best = -np.inf

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if not self.write:
            return
        save_weights_atomic(self.network, self.last_path)
        value = logs.get(self.monitor)
        if value is not None and float(value) > self.best:
            log.info("epoch %d: %s improved %.4f -> %.4f, saving %s", epoch + 1, self.monitor, self.best, float(value), self.best_path)
            self.best = float(value)
            save_weights_atomic(self.network, self.best_path)


class ImageSummaries(keras.callbacks.Callback):
    """TensorBoard images after each validation: input, ground truth, prediction, edge map."""

    def __init__(self, network, images, labels, log_dir, mean, std, every_n_epochs=1):
        super().__init__()
        self.network = network
        self.images = images  # (N, H, W, 3) normalised
        self.labels = labels  # (N, H, W) train ids
        self.mean = np.asarray(mean, np.float32)
        self.std = np.asarray(std, np.float32)
        self.every = max(1, every_n_epochs)
        self.writer = tf.summary.create_file_writer(os.path.join(log_dir, "images"))

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every:
            return
        from gscnn_tf.labels import colorize

        outputs = self.network(self.images, training=False)
        pred = np.argmax(keras.ops.convert_to_numpy(outputs["seg_logits"]), axis=-1)
        edge = keras.ops.convert_to_numpy(outputs["edge"])
        rgb = np.clip(np.asarray(self.images) * self.std + self.mean, 0, 255).astype(np.uint8)
        with self.writer.as_default(step=epoch + 1):
            tf.summary.image("input", rgb, max_outputs=len(rgb))
            tf.summary.image("ground_truth", colorize(np.asarray(self.labels)), max_outputs=len(rgb))
            tf.summary.image("prediction", colorize(pred), max_outputs=len(rgb))
            tf.summary.image("edge", edge.astype(np.float32), max_outputs=len(rgb))
        self.writer.flush()
