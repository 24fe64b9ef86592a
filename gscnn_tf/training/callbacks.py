"""Training callbacks: the run directory's backups, checkpoints and metrics; image summaries.

Keras' own ``BackupAndRestore`` resumes at the start of the last saved *epoch* and
overwrites its files in place; ``RunCheckpointer`` resumes at the exact optimizer step,
writes each backup into a new directory that becomes current only once complete, keeps
the best validation value with it, never writes non-finite weights, and orders the
end-of-epoch writes so that a rerun completes whatever a kill interrupted.
"""
from __future__ import annotations

import contextlib
import csv
import errno
import glob
import io
import json
import logging
import math
import os
import shutil
import sys
import time
from typing import Optional

import keras
import numpy as np
import tensorflow as tf

from gscnn_tf.training.checkpoints import BEST_WEIGHTS, LAST_WEIGHTS, non_finite_weights
from gscnn_tf.training.errors import TrainingError, TrainingFailed, writing
from gscnn_tf.utils.atomic import atomic_directory, atomic_path, atomic_write_text, remove_stale_temporaries

log = logging.getLogger(__name__)

BACKUP_DIR = "backup"
BACKUP_POINTER = "latest.json"
# The name predates GatedSCNN (the weights were a trainer wrapper's). It stays, so that a
# backup from an older version is found and refused with a message (its layout differs),
# not skipped as missing, which would start the run again over its checkpoints.
BACKUP_WEIGHTS = "trainer.weights.h5"
METRICS_CSV = "training_log.csv"


def is_chief() -> bool:
    """True on the process that writes files (worker 0 / the chief under MultiWorker)."""
    resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    if not resolver.cluster_spec().as_dict():
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    return task_type == "chief" or (task_type == "worker" and task_id == 0 and "chief" not in resolver.cluster_spec().as_dict())


def ensure_free_space(path: str, variables) -> None:
    """Raises ``OSError(ENOSPC)`` naming ``path`` when its filesystem cannot hold ``variables``.

    HDF5 does not fail cleanly when the disk fills up mid-write (h5py reports errors from
    destructors and the process may segfault), so weights files are only started when
    there is room: the variables' bytes plus ~2 KiB of HDF5 metadata per variable
    (measured: 1.6 KiB) and 64 KiB, or the size of the file being replaced if larger.
    """
    needed = 64 << 10
    for v in variables:
        try:
            itemsize = np.dtype(keras.backend.standardize_dtype(v.dtype)).itemsize
        except TypeError:
            itemsize = 4
        needed += int(np.prod(v.shape)) * itemsize + (2 << 10)
    with contextlib.suppress(OSError):
        needed = max(needed, os.path.getsize(path))
    directory = os.path.dirname(os.path.abspath(path))
    while not os.path.isdir(directory) and os.path.dirname(directory) != directory:
        directory = os.path.dirname(directory)  # not created yet: its filesystem is its parent's
    free = shutil.disk_usage(directory).free
    if free < needed:
        raise OSError(errno.ENOSPC, f"No space left on device ({needed / 2**20:.1f} MiB needed, "
                      f"{free / 2**20:.1f} MiB free)", path)


def save_weights_atomic(model: keras.Model, path: str) -> None:
    """The model's weights, without its optimizer state, through a temporary ``*.weights.h5``
    that is renamed when complete (the inference checkpoints; backups keep the optimizer)."""
    ensure_free_space(path, model.weights)
    optimizer = getattr(model, "optimizer", None)
    with atomic_path(path, suffix=".weights.h5") as tmp:
        # ``objects_to_skip`` reaches Keras' saving_lib through the public keras.saving.save_weights;
        # it is the only way to leave a compiled model's optimizer out of the file (which would
        # double its size). tests/test_private_hooks.py fails by name if Keras drops it.
        keras.saving.save_weights(model, tmp, objects_to_skip=[optimizer] if optimizer is not None else None)


def read_backup(backup_dir: str) -> Optional[dict]:
    """The newest complete backup's record, or None when there is none.

    Keys: ``weights`` (path of the model + optimizer weights), ``global_step``, ``best`` (the best
    monitored value so far: ``{"monitor", "value", "epoch", "global_step"}``, value None
    before the first validation) and, for a backup taken at an epoch end, ``epoch_end``
    (``{"epoch", "logs", "best_improved"}``: what the epoch's other files must hold).
    """
    pointer = os.path.join(backup_dir, BACKUP_POINTER)
    if not os.path.isfile(pointer):
        return None
    try:
        with open(pointer, encoding="utf-8") as f:
            meta = json.load(f)
        meta["weights"] = os.path.join(backup_dir, meta["dir"], BACKUP_WEIGHTS)
        meta["global_step"] = int(meta["global_step"])
    except (ValueError, KeyError, TypeError) as exc:
        raise TrainingError(f"{pointer}: unreadable backup pointer ({exc}); rerun with --fresh to start afresh") from exc
    if not os.path.isfile(meta["weights"]):
        raise TrainingError(f"{pointer}: names {meta['weights']}, which is missing; rerun with --fresh to start afresh")
    return meta


def remove_stale_backups(backup_dir: str, keep: Optional[str]) -> None:
    """Deletes backup directories other than ``keep`` and temporaries of killed writers."""
    remove_stale_temporaries(backup_dir)
    for old in glob.glob(os.path.join(backup_dir, "step-*")):
        if os.path.basename(old) != keep:
            shutil.rmtree(old, ignore_errors=True)


def best_from_csv(csv_path: str, monitor: str) -> Optional[dict]:
    """Best ``monitor`` value in a metrics CSV (backups written before the value was kept)."""
    best = None
    if not os.path.isfile(csv_path):
        return None
    with open(csv_path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            try:
                value, epoch = float(row.get(monitor, "nan")), int(row["epoch"])
            except (TypeError, ValueError, KeyError):
                continue
            if math.isfinite(value) and (best is None or value > best["value"]):
                best = {"monitor": monitor, "value": value, "epoch": epoch, "global_step": None}
    return best


def write_csv_row(path: str, epoch: int, logs: dict) -> None:
    """Puts ``logs`` in the metrics CSV as the row of ``epoch`` (0-based, as Keras' CSVLogger).

    Rewrites the file atomically with that row replaced or added, so writing an epoch
    twice (a rerun completing an interrupted epoch) leaves one row; columns are the
    union of all rows' keys (epochs without validation show ``NA``).
    """
    rows = {}
    keys = set()
    if os.path.isfile(path):
        with open(path, newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                with contextlib.suppress(TypeError, ValueError, KeyError):
                    rows[int(row["epoch"])] = row
                    keys.update(k for k in row if k != "epoch")
    rows[int(epoch)] = {"epoch": str(int(epoch)), **{k: repr(float(v)) for k, v in logs.items()}}
    keys.update(logs)
    columns = ["epoch"] + sorted(keys)
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, restval="NA", extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for e in sorted(rows):
        writer.writerow(rows[e])
    atomic_write_text(path, out.getvalue())


def _float_logs(logs: dict) -> dict:
    out = {}
    for key, value in (logs or {}).items():
        with contextlib.suppress(TypeError, ValueError):
            out[key] = float(np.asarray(value).reshape(-1)[0])
    return out


def complete_epoch(model: keras.Model, model_dir: str, meta: dict) -> None:
    """Writes what an epoch-end backup says the epoch produced: last (and best) weights, CSV row.

    Called right after the backup at each epoch end, and again on resume from such a
    backup (the model then holds exactly the epoch's weights): every write is
    idempotent, so a kill anywhere in between loses nothing. When all are done the
    pointer records it (``"written": true``), so later resumes skip them.
    """
    record = meta.get("epoch_end")
    if not record or record.get("written"):
        return
    if record.get("best_improved"):
        path = os.path.join(model_dir, BEST_WEIGHTS)
        with writing(path):
            save_weights_atomic(model, path)
    path = os.path.join(model_dir, LAST_WEIGHTS)
    with writing(path):
        save_weights_atomic(model, path)
    path = os.path.join(model_dir, METRICS_CSV)
    with writing(path):
        write_csv_row(path, record["epoch"], record["logs"])
    # Done: a resume from this backup need not write them again.
    record["written"] = True
    path = os.path.join(model_dir, BACKUP_DIR, BACKUP_POINTER)
    with writing(path):
        atomic_write_text(path, json.dumps({k: v for k, v in meta.items() if k != "weights"}))


class RunCheckpointer(keras.callbacks.Callback):
    """Every file of the run directory that training keeps, written so no kill loses any.

    - every ``save_freq`` steps (an int; or only at epoch ends with ``"epoch"``): a
      step-exact backup of the model (weights + optimizer state) in
      ``backup/step-XXXXXXXX/`` (written to a temp dir, then renamed), made current by
      atomically replacing ``backup/latest.json``, which also keeps the best monitored
      value so far (so a resumed run does not overwrite a better ``best`` checkpoint);
    - at each epoch end, in this order: the backup, whose ``latest.json`` records the
      epoch's logs and whether it improved the best; then ``checkpoints/best.weights.h5``
      (on a new best ``monitor``), ``checkpoints/last.weights.h5`` and the epoch's row of
      ``training_log.csv`` (:func:`complete_epoch`). A rerun after a kill between these
      writes resumes from that backup and completes them first.
    - before anything is written, and after every batch, the loss and (at writes) every
      weight must be finite: a diverged run raises :class:`TrainingFailed`, leaving the
      last good backup and checkpoints as they were.

    Every worker runs the checks (so all stop together); only ``write=True`` writes.
    """

    def __init__(self, model_dir: str, save_freq="epoch", monitor="val_miou",
                 best: Optional[dict] = None, write: bool = True):
        super().__init__()
        self.model_dir = model_dir
        self.backup_dir = os.path.join(model_dir, BACKUP_DIR)
        self.save_freq = save_freq
        self.monitor = monitor
        self.write = write
        self.best = dict(best) if best else {"monitor": monitor, "value": None, "epoch": None, "global_step": None}
        self.last_backup_step: Optional[int] = None
        self._last_saved = None  # (step, backup dir name) of the newest backup this run wrote

    def _global_step(self) -> int:
        return int(self.model.optimizer.iterations.numpy())

    def _diverged(self, what: str, step: int):
        since = ("no backup was written" if self.last_backup_step is None
                 else f"the last good backup is at step {self.last_backup_step}")
        return TrainingFailed(
            f"training diverged: {what} at step {step}; nothing was written after that ({since}; "
            "checkpoints and model.keras hold earlier, finite weights). Lower train.learning_rate and "
            "rerun with --allow-config-change to resume from the last good backup, or with --fresh to start again"
        )

    def _check_weights(self, step: int) -> None:
        bad = non_finite_weights(self.model, self.model.optimizer.variables)
        if bad:
            raise self._diverged(f"{len(bad)} weight(s) are NaN or infinite (e.g. {bad[0]})", step)

    def _backup(self, step: int, epoch_end: Optional[dict] = None) -> dict:
        self._check_weights(step)
        name = f"step-{step:08d}"
        meta = {"dir": name, "global_step": step, "best": self.best}
        if epoch_end is not None:
            meta["epoch_end"] = epoch_end
        if self.write:
            if self._last_saved != (step, name):  # the epoch end may follow a step backup of the same step
                target = os.path.join(self.backup_dir, name)
                with writing(target):
                    ensure_free_space(os.path.join(target, BACKUP_WEIGHTS),
                                      list(self.model.weights) + list(self.model.optimizer.variables))
                    with atomic_directory(target, overwrite=True) as tmp:
                        self.model.save_weights(os.path.join(tmp, BACKUP_WEIGHTS))
            pointer = os.path.join(self.backup_dir, BACKUP_POINTER)
            with writing(pointer):
                atomic_write_text(pointer, json.dumps(meta))
            remove_stale_backups(self.backup_dir, keep=name)
            log.debug("backup written at step %d", step)
        self._last_saved = (step, name)
        self.last_backup_step = step
        return meta

    def on_train_batch_end(self, batch, logs=None):
        step = self._global_step()
        loss = _float_logs({"loss": logs["loss"]}).get("loss") if logs and "loss" in logs else None
        if loss is not None and not math.isfinite(loss):
            raise self._diverged(f"the loss is {loss}", step)
        # Not at the fit's last batch: that step's backup is the epoch-end one, written after
        # validation with the epoch's record. A backup here would let a kill during validation
        # resume "after" an epoch whose validation, checkpoints and CSV row never happened.
        last_batch = self.params and self.params.get("steps") and batch + 1 >= self.params["steps"]
        if isinstance(self.save_freq, int) and step % self.save_freq == 0 and not last_batch:
            self._backup(step)

    def on_epoch_end(self, epoch, logs=None):
        step = self._global_step()
        values = _float_logs(logs)
        for key in ("loss", "val_loss"):
            if key in values and not math.isfinite(values[key]):
                raise self._diverged(f"{key} is {values[key]} at the end of epoch {epoch + 1}", step)
        value = values.get(self.monitor)
        improved = value is not None and math.isfinite(value) and (self.best["value"] is None or value > self.best["value"])
        if improved and self.write:  # other workers of a multi-worker run write nothing: they say nothing
            log.info("epoch %d: %s improved %s -> %.4f, saving %s", epoch + 1, self.monitor,
                     "none" if self.best["value"] is None else f"{self.best['value']:.4f}", value,
                     os.path.join(self.model_dir, BEST_WEIGHTS))
        if improved:
            self.best = {"monitor": self.monitor, "value": value, "epoch": epoch + 1, "global_step": step}
        meta = self._backup(step, {"epoch": epoch, "logs": values, "best_improved": bool(improved)})
        if self.write:
            complete_epoch(self.model, self.model_dir, meta)


class EpochLines(keras.callbacks.Callback):
    """One plain line per epoch on stdout, for logs that are kept (a file, CI, ``nohup``)::

        epoch 3/8 - 41.2 s - loss: 1.2345 - miou: 0.3012 - val_loss: 1.5000 - val_miou: 0.2876

    Seconds from the epoch's start to its end (validation and checkpoints included);
    metrics in Keras' order and format (4 decimals, scientific below 1e-3). Keras'
    progress bar writes ANSI colours, backspaces and carriage returns even when stdout is
    not a terminal, so training uses this callback with ``verbose=0`` there.
    """

    def __init__(self, total_epochs: int, stream=None):
        super().__init__()
        self.total_epochs = int(total_epochs)
        self.stream = stream  # None: sys.stdout at print time (pytest and tools may replace it)
        self._start = None

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.monotonic()

    def on_epoch_end(self, epoch, logs=None):
        seconds = time.monotonic() - self._start if self._start is not None else float("nan")
        parts = [f"epoch {epoch + 1}/{self.total_epochs}", f"{seconds:.1f} s"]
        for key, value in _float_logs(logs).items():
            parts.append(f"{key}: {value:.4f}" if abs(value) > 1e-3 or value == 0 else f"{key}: {value:.4e}")
        print(" - ".join(parts), file=self.stream or sys.stdout, flush=True)


class ImageSummaries(keras.callbacks.Callback):
    """TensorBoard images after each validation: input, ground truth, prediction, edge map."""

    def __init__(self, images, labels, log_dir, every_n_epochs=1, colors=None):
        super().__init__()
        self.colors = colors  # (K, 3) RGB 0..255 class colours (None: Cityscapes')
        self.images = images  # (N, H, W, 3) RGB 0..255
        self.labels = labels  # (N, H, W) train ids
        self.every = max(1, every_n_epochs)
        self.writer = tf.summary.create_file_writer(os.path.join(log_dir, "images"))

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every:
            return
        from gscnn_tf.data.labels import colorize

        outputs = self.model(self.images, training=False)
        pred = np.argmax(keras.ops.convert_to_numpy(outputs["seg_logits"]), axis=-1)
        edge = keras.ops.convert_to_numpy(outputs["edge"])
        rgb = np.clip(np.rint(np.asarray(self.images)), 0, 255).astype(np.uint8)
        with self.writer.as_default(step=epoch + 1):
            tf.summary.image("input", rgb, max_outputs=len(rgb))
            tf.summary.image("ground_truth", colorize(np.asarray(self.labels), self.colors), max_outputs=len(rgb))
            tf.summary.image("prediction", colorize(pred, self.colors), max_outputs=len(rgb))
            tf.summary.image("edge", edge.astype(np.float32), max_outputs=len(rgb))
        self.writer.flush()
