"""The training driver behind ``train_keras.py``: config -> strategy -> data -> model.fit.

Resuming: a run directory with a backup (``backup/latest.json``) resumes at the exact
optimizer step it was saved at — mid-epoch included: the rest of that epoch runs first,
then whole epochs. The learning-rate schedule follows the restored step, so the
resumed run has the same schedule as an uninterrupted one (the data order after a
resume is a fresh shuffle, not a replay).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time

import keras
import numpy as np
import tensorflow as tf

from gscnn_tf.checkpoints import BEST_WEIGHTS, CONFIG_NAME, FINAL_MODEL, LAST_WEIGHTS, load_inference_model
from gscnn_tf.config import ExperimentConfig, save_config
from gscnn_tf.training import callbacks as cb
from gscnn_tf.training.distribute import make_strategy, resolve_jit_compile
from gscnn_tf.training.optimizer import build_optimizer
from gscnn_tf.training.trainer import GSCNNTrainer
from gscnn_tf.utils.atomic import atomic_path, atomic_write_text

log = logging.getLogger(__name__)


class TrainingError(RuntimeError):
    """A run cannot start (bad data pattern, inconsistent resume state, ...)."""


def count_records(pattern: str) -> int:
    """Number of records in the shards matching ``pattern`` (reads framing only, no decoding)."""
    files = sorted(tf.io.gfile.glob(pattern)) if pattern else []
    if not files:
        raise TrainingError(f"data pattern {pattern!r} matches no files")
    return int(tf.data.TFRecordDataset(files).reduce(np.int64(0), lambda n, _: n + 1).numpy())


def weights_fingerprint(model) -> str:
    """sha256 of all weights' bytes: replicas/workers that agree on the weights print the same."""
    digest = hashlib.sha256()
    for w in model.get_weights():
        digest.update(np.ascontiguousarray(w).tobytes())
    return digest.hexdigest()[:16]


def _steps_per_epoch(cfg: ExperimentConfig) -> int:
    if cfg.train.steps_per_epoch:
        return int(cfg.train.steps_per_epoch)
    if cfg.data.source != "tfrecord":
        raise TrainingError("train.steps_per_epoch must be set when data.source is not 'tfrecord'")
    return max(1, count_records(cfg.data.train_pattern) // cfg.train.batch_size)


def _build_datasets(cfg: ExperimentConfig, strategy, normalization, seed):
    from gscnn_tf.data import pipeline

    replicas = strategy.num_replicas_in_sync
    if replicas > 1 or cfg.train.strategy == "multi_worker":
        train_ds = pipeline.make_distributed_train_dataset(
            strategy, cfg.data, cfg.train.batch_size, normalization=normalization, seed=seed,
            boundary_radius=cfg.loss.boundary_radius, repeat=True,
        )
    else:
        train_ds = pipeline.build_train_dataset(
            cfg.data, cfg.train.batch_size, normalization=normalization, seed=seed,
            boundary_radius=cfg.loss.boundary_radius, repeat=True,
        )
    val_ds = None
    if cfg.data.val_pattern or cfg.data.source == "tfds":
        val_ds = pipeline.build_eval_dataset(cfg.data, normalization=normalization, boundary_radius=cfg.loss.boundary_radius)
        if replicas > 1:
            # Every replica gets one full image (Cityscapes images share one size).
            val_ds = val_ds.unbatch().batch(replicas, drop_remainder=True)
    return train_ds, val_ds


def _first_examples(val_ds, n):
    images, labels = [], []
    for image, targets in val_ds.unbatch().take(n):
        images.append(image.numpy())
        labels.append(targets["label"].numpy())
    if not images:
        return None, None
    return np.stack(images), np.stack(labels)


def train(cfg: ExperimentConfig, fresh: bool = False, require_resume: bool = False) -> dict:
    """Runs (or resumes) training as configured; returns a summary dict (also saved as JSON).

    Args:
        fresh: delete an existing backup in ``model_dir`` and start from scratch.
        require_resume: fail unless a backup exists (the CLI's ``--resume``).
    """
    from gscnn_tf.backbones import normalization_for
    from gscnn_tf.model import build_gscnn

    tcfg = cfg.train
    strategy = make_strategy(tcfg)  # first: may split the CPU into logical devices
    if tcfg.seed is not None:
        keras.utils.set_random_seed(tcfg.seed)
    if tcfg.mixed_precision:
        keras.config.set_dtype_policy("mixed_float16")
    chief = cb.is_chief()
    model_dir = tcfg.model_dir
    backup_dir = os.path.join(model_dir, "backup")
    if fresh and chief and os.path.isdir(backup_dir):
        log.info("--fresh: removing the backup in %s", backup_dir)
        shutil.rmtree(backup_dir)
    backup = cb.latest_backup(backup_dir)
    if require_resume and backup is None:
        raise TrainingError(f"--resume: no backup in {backup_dir}")
    if chief:
        os.makedirs(model_dir, exist_ok=True)
        save_config(cfg, os.path.join(model_dir, CONFIG_NAME))

    normalization = normalization_for(cfg.model.backbone)
    steps_per_epoch = _steps_per_epoch(cfg)
    total_steps = steps_per_epoch * tcfg.epochs
    train_ds, val_ds = _build_datasets(cfg, strategy, normalization, tcfg.seed)

    with strategy.scope():
        network = build_gscnn(cfg.model)
        if tcfg.init_checkpoint:
            log.info("fine-tuning from %s", tcfg.init_checkpoint)
            source, _ = load_inference_model(tcfg.init_checkpoint, cfg)
            network.set_weights(source.get_weights())
        trainer = GSCNNTrainer(
            network, cfg.loss, num_classes=cfg.model.num_classes, use_edge_terms=cfg.model.shape_stream,
            seed=tcfg.seed,
        )
        trainer.compile(optimizer=build_optimizer(tcfg, total_steps), jit_compile=resolve_jit_compile(tcfg, strategy))
        crop_h, crop_w = cfg.data.crop_size
        trainer(np.zeros((1, crop_h, crop_w, 3), np.float32))  # build before restoring weights
        trainer.optimizer.build(trainer.trainable_variables)
        global_step = 0
        if backup is not None:
            weights_path, global_step = backup
            trainer.load_weights(weights_path)
            global_step = int(trainer.optimizer.iterations.numpy())
            log.info("resuming from %s at step %d (epoch %d)", weights_path, global_step, global_step // steps_per_epoch + 1)

    if global_step >= total_steps:
        log.info("run already complete (%d/%d steps)", global_step, total_steps)

    logs_dir = os.path.join(model_dir, "logs")
    callbacks = [
        keras.callbacks.TerminateOnNaN(),
        cb.StepBackup(backup_dir, save_freq=tcfg.backup_save_freq, write=chief),
        cb.InferenceCheckpoint(
            network, os.path.join(model_dir, BEST_WEIGHTS), os.path.join(model_dir, LAST_WEIGHTS), write=chief
        ),
    ]
    if chief:
        callbacks += [
            keras.callbacks.CSVLogger(os.path.join(model_dir, "training_log.csv"), append=True),
            keras.callbacks.TensorBoard(logs_dir, write_graph=False, update_freq="epoch", profile_batch=0),
        ]
        if val_ds is not None and tcfg.image_summaries:
            images, labels = _first_examples(val_ds, tcfg.image_summaries)
            if images is not None:
                mean, std = normalization
                callbacks.append(cb.ImageSummaries(network, images, labels, logs_dir, mean, std))

    fit_kwargs = dict(
        validation_data=val_ds, validation_steps=tcfg.validation_steps, validation_freq=tcfg.validation_freq,
        callbacks=callbacks,
        verbose="auto" if chief else 0,
    )
    started = time.time()
    history: dict = {}
    epoch, step_in_epoch = divmod(global_step, steps_per_epoch)
    if step_in_epoch and epoch < tcfg.epochs:
        # Finish the interrupted epoch first, then continue with whole epochs.
        h = trainer.fit(train_ds, initial_epoch=epoch, epochs=epoch + 1,
                        steps_per_epoch=steps_per_epoch - step_in_epoch, **fit_kwargs)
        history.update({k: list(v) for k, v in h.history.items()})
        epoch += 1
    if epoch < tcfg.epochs:
        h = trainer.fit(train_ds, initial_epoch=epoch, epochs=tcfg.epochs, steps_per_epoch=steps_per_epoch, **fit_kwargs)
        for k, v in h.history.items():
            history.setdefault(k, []).extend(v)

    summary = {
        "model_dir": os.path.abspath(model_dir),
        "weights_fingerprint": weights_fingerprint(network),
        "global_step": int(trainer.optimizer.iterations.numpy()),
        "steps_per_epoch": steps_per_epoch,
        "epochs": tcfg.epochs,
        "replicas": strategy.num_replicas_in_sync,
        "resumed_from_step": global_step if backup is not None else None,
        "seconds": round(time.time() - started, 1),
        "history": {k: [float(x) for x in v] for k, v in history.items()},
    }
    if chief:
        with atomic_path(os.path.join(model_dir, FINAL_MODEL), suffix=".keras") as tmp:
            network.save(tmp)
        if not os.path.isfile(os.path.join(model_dir, LAST_WEIGHTS)):
            cb.save_weights_atomic(network, os.path.join(model_dir, LAST_WEIGHTS))
        atomic_write_text(os.path.join(model_dir, "train_summary.json"), json.dumps(summary, indent=2))
    return summary
