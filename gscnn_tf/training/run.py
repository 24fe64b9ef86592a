"""The training driver behind ``train_keras.py``: config -> strategy -> data -> model.fit.

Resuming: a run directory with a backup (``backup/latest.json``) resumes at the exact
optimizer step it was saved at — mid-epoch included: the rest of that epoch runs first,
then whole epochs. The learning-rate schedule follows the restored step, so the
resumed run has the same schedule as an uninterrupted one (the data order after a
resume is a fresh shuffle, not a replay).
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import sys
import time
from typing import Optional

import keras
import numpy as np
import tensorflow as tf

from gscnn_tf.config import ConfigError, ExperimentConfig, config_to_dict, load_config, save_config
from gscnn_tf.training import callbacks as cb
from gscnn_tf.training.checkpoints import (
    BEST_WEIGHTS,
    CONFIG_NAME,
    FINAL_MODEL,
    LAST_WEIGHTS,
    CheckpointError,
    find_run_config,
    load_inference_model,
    non_finite_weights,
    resolve_checkpoint,
)
from gscnn_tf.training.distribute import make_strategy, resolve_jit_compile
from gscnn_tf.training.errors import TrainingError, TrainingFailed, writing
from gscnn_tf.training.optimizer import build_optimizer
from gscnn_tf.utils.atomic import atomic_path, atomic_write_text, remove_stale_temporaries

log = logging.getLogger(__name__)


SUMMARY_NAME = "train_summary.json"


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


def _steps_per_epoch(cfg: ExperimentConfig, train_records: Optional[int] = None) -> int:
    """``train.steps_per_epoch``, else one pass: ``train_records`` (the manifests' count, when
    every shard has one) or the records counted in the shards, over the batch size."""
    if cfg.train.steps_per_epoch:
        return int(cfg.train.steps_per_epoch)
    if cfg.data.source != "tfrecord":
        raise TrainingError("train.steps_per_epoch must be set when data.source is not 'tfrecord'")
    if train_records is None:
        train_records = count_records(cfg.data.train_pattern)
    return max(1, train_records // cfg.train.batch_size)


def _build_datasets(cfg: ExperimentConfig, strategy, seed, val_records=None):
    from gscnn_tf.data import pipeline
    from gscnn_tf.data.augment import pad_color_rgb

    # The pipeline knows no backbone: "mean" padding becomes that backbone's RGB mean here.
    train_data = dataclasses.replace(cfg.data, pad_color=list(pad_color_rgb(cfg.data.pad_color, cfg.model.backbone)))

    replicas = strategy.num_replicas_in_sync
    if replicas > 1 or cfg.train.strategy == "multi_worker":
        train_ds = pipeline.make_distributed_train_dataset(
            strategy, train_data, cfg.train.batch_size, seed=seed,
            boundary_radius=cfg.loss.boundary_radius, repeat=True, ignore_label=cfg.dataset.ignore_label,
        )
    else:
        train_ds = pipeline.build_train_dataset(
            train_data, cfg.train.batch_size, seed=seed,
            boundary_radius=cfg.loss.boundary_radius, repeat=True, ignore_label=cfg.dataset.ignore_label,
        )
    val_ds = None
    if cfg.data.val_pattern or cfg.data.source == "tfds":
        val_ds = pipeline.build_eval_dataset(cfg.data, boundary_radius=cfg.loss.boundary_radius,
                                             ignore_label=cfg.dataset.ignore_label)
        if val_records is None and cfg.data.source == "tfrecord":
            val_records = count_records(cfg.data.val_pattern)
        batches = val_records
        if replicas > 1:
            # Every replica gets one full image (Cityscapes images share one size).
            val_ds = val_ds.unbatch().batch(replicas, drop_remainder=True)
            batches = None if val_records is None else val_records // replicas
        if batches is not None:
            # A known length lets Keras end each validation without running into the end of
            # the data (which it reports as "Your input ran out of data; interrupting training").
            val_ds = val_ds.apply(tf.data.experimental.assert_cardinality(batches))
    return train_ds, val_ds


def _first_examples(val_ds, n):
    images, labels = [], []
    for image, targets in val_ds.unbatch().take(n):
        images.append(image.numpy())
        labels.append(targets["label"].numpy())
    if not images:
        return None, None
    return np.stack(images), np.stack(labels)


# Fields a resumed run may not change even with --allow-config-change: the network's
# architecture and the optimizer state's layout (the backup and checkpoints would not fit,
# or, for shape-compatible ones like the output stride, would silently mean another model).
RESUME_FIXED_TRAIN_FIELDS = ("optimizer", "mixed_precision")


def _differences(old, new, prefix=""):
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in list(old) + [k for k in new if k not in old]:
            out += _differences(old.get(key), new.get(key), f"{prefix}{key}.")
        return out
    return [] if old == new else [(prefix[:-1], old, new)]


def check_config_change(cfg: ExperimentConfig, allow_change: bool = False) -> list:
    """Compares ``cfg`` with the run directory's ``config.yaml``; returns the differences.

    A run directory's config is its record (export and evaluation rebuild the model from
    it), so it changes only when asked: any difference in ``model.*`` or
    ``train.optimizer``/``train.mixed_precision`` is refused (use ``--fresh`` or another
    run directory); other differences (epochs, learning rate, data, ...) are refused
    unless ``allow_change`` (the CLI's ``--allow-config-change``). Nothing is written here.
    """
    path = os.path.join(cfg.train.model_dir, CONFIG_NAME)
    if not os.path.isfile(path):
        return []
    try:
        saved = load_config(path)
    except ConfigError as exc:
        raise TrainingError(f"{exc}; rerun with --fresh to replace this run, or use another --model-dir") from exc
    diffs = [d for d in _differences(config_to_dict(saved), config_to_dict(cfg)) if d[0] != "train.model_dir"]
    if not diffs:
        return []

    def describe(items):
        shown = ", ".join(f"{k}: {o!r} -> {n!r}" for k, o, n in items[:6])
        return shown + (f" and {len(items) - 6} more" if len(items) > 6 else "")

    fixed = [d for d in diffs if d[0].startswith("model.") or d[0] in {f"train.{f}" for f in RESUME_FIXED_TRAIN_FIELDS}]
    if fixed:
        raise TrainingError(
            f"{cfg.train.model_dir} holds a run of another model ({describe(fixed)}); its backup and "
            "checkpoints do not belong to this config. Use another --model-dir, or --fresh to discard that run"
        )
    if not allow_change:
        raise TrainingError(
            f"this config differs from {path} ({describe(diffs)}); pass --allow-config-change to continue "
            "the run with the new values, --fresh to start it again, or use another --model-dir"
        )
    log.warning("continuing %s with a changed config: %s", cfg.train.model_dir, describe(diffs))
    return diffs


def _discard_run(model_dir: str) -> None:
    """--fresh: removes what an earlier run in ``model_dir`` trained (not its TensorBoard logs)."""
    removed = []
    for name in (cb.BACKUP_DIR, os.path.dirname(BEST_WEIGHTS), FINAL_MODEL, cb.METRICS_CSV, SUMMARY_NAME, CONFIG_NAME):
        path = os.path.join(model_dir, name)
        if os.path.isdir(path):
            shutil.rmtree(path)
        elif os.path.exists(path):
            os.remove(path)
        else:
            continue
        removed.append(name)
    if removed:
        log.info("--fresh: removed %s from %s", ", ".join(removed), model_dir)


def _check_init_source(init: str, model_dir: str, resolve: bool = True) -> Optional[str]:
    """``train.init_checkpoint`` -> the weights file it means; refuses one this run would write.

    The source is only read: a run directory (its best, else last weights, else
    model.keras) or a ``.weights.h5``/``.keras`` file, which must not lie inside
    ``model_dir`` (training there would overwrite it, ``--fresh`` delete it). With
    ``resolve=False`` (a resumed run, which does not read it) only that is checked.
    """
    run_dir = os.path.realpath(model_dir)

    def refuse_inside(path):
        if os.path.commonpath([os.path.realpath(path), run_dir]) == run_dir:
            raise TrainingError(
                f"train.init_checkpoint {init} is inside the run directory {model_dir} that this training writes; "
                "fine-tune into a new run directory: --model-dir NEW (or --set train.model_dir=NEW)"
            )

    refuse_inside(init)
    if not resolve:
        return None
    try:
        path = resolve_checkpoint(init)
    except CheckpointError as exc:
        raise TrainingError(f"train.init_checkpoint: {exc}") from None
    refuse_inside(path)
    return path


def _init_weights(cfg: ExperimentConfig, path: str) -> list:
    """The weights of the checkpoint ``path`` (see :func:`_check_init_source`), as NumPy arrays.

    The source is built with its own run's config.yaml where it has one (else with ``cfg``),
    so its file loads as it was written; whether its weights fit ``cfg``'s model is checked
    by :func:`_set_init_weights`. Differences of the two model configs are logged.
    """
    source_config = find_run_config(path)
    saved = load_config(source_config) if source_config else None
    try:
        source, saved_cfg = load_inference_model(path, saved if saved is not None else cfg)
    except (CheckpointError, ConfigError, OSError) as exc:
        raise TrainingError(f"train.init_checkpoint: {exc}") from None
    diffs = [d for d in _differences(config_to_dict(saved_cfg)["model"], config_to_dict(cfg)["model"])]
    if diffs:
        log.warning("fine-tuning from %s, whose model config differs from this one: %s", path,
                    ", ".join(f"model.{k}: {o!r} -> {n!r}" for k, o, n in diffs))
    return source.get_weights()


def _set_init_weights(model, weights: list, path: str) -> None:
    """Puts ``weights`` into ``model``; a source of another architecture is one line naming ``path``."""
    mine = model.weights
    problem = None
    if len(weights) != len(mine):
        problem = f"{len(weights)} weights in the file, {len(mine)} in this model"
    for variable, value in zip(mine, weights):
        if problem is None and tuple(variable.shape) != tuple(value.shape):
            problem = f"{variable.path} is {tuple(value.shape)} in the file, {tuple(variable.shape)} in this model"
    if problem:
        raise TrainingError(f"{path}: its weights do not fit this model ({problem}); the fine-tuning config's "
                            "model.* must describe the network that wrote them")
    model.set_weights(weights)


def _remove_stale_temporaries(model_dir: str) -> None:
    """Temp files/directories of killed writers (atomic writes that never got renamed)."""
    removed = []
    for sub in ("", os.path.dirname(BEST_WEIGHTS)):
        removed += remove_stale_temporaries(os.path.join(model_dir, sub))
    if removed:
        log.info("removed %d temporary file(s) left by a killed run in %s", len(removed), model_dir)


def _check_data(cfg: ExperimentConfig) -> tuple:
    """Checks the shards against their manifests before anything is written.

    Returns ``(train records, val records)`` as the manifests count them (each None where a
    shard has no manifest, or there are no shards to check), so that nothing reads the
    shards again just to count them.
    """
    from gscnn_tf.data import shard_checks

    if cfg.data.source != "tfrecord":
        return None, None
    train_records = shard_checks.check_shards(cfg.data.train_pattern, "data.train_pattern", cfg.dataset)
    val_records = (shard_checks.check_shards(cfg.data.val_pattern, "data.val_pattern", cfg.dataset)
                   if cfg.data.val_pattern else None)
    return train_records, val_records


@contextlib.contextmanager
def _naming_bad_data(cfg: ExperimentConfig):
    """A corrupt shard or record met while training -> one line naming it (TrainingFailed)."""
    from gscnn_tf.data import shard_checks

    try:
        yield
    except tf.errors.OpError as exc:
        patterns = [p for p in (cfg.data.train_pattern, cfg.data.val_pattern) if p] if cfg.data.source == "tfrecord" else []
        message = shard_checks.describe_data_error(exc, patterns)
        if message is None:
            raise
        raise TrainingFailed(message) from None


PROGRESS_MODES = ("auto", "bar", "lines", "off")


def train(cfg: ExperimentConfig, fresh: bool = False, require_resume: bool = False,
          allow_config_change: bool = False, progress: str = "auto") -> dict:
    """Runs (or resumes) training as configured; returns a summary dict (also saved as JSON).

    Args:
        fresh: discard an earlier run in ``model_dir`` (backup, checkpoints, model.keras,
            metrics, config) and start from scratch.
        require_resume: fail unless a backup exists (the CLI's ``--resume``).
        allow_config_change: let a resumed run change non-model fields of its config
            (see :func:`check_config_change`).
        progress: what goes to stdout while training: "bar" (Keras' progress bar, for a
            terminal), "lines" (one plain line per epoch: epoch, seconds, metrics; for log
            files), "off", or "auto": "bar" when stdout is a terminal, else "lines".

    ``train.init_checkpoint`` (a run directory, ``.weights.h5`` or ``.keras`` file outside
    ``model_dir``) initialises a new run's model with those weights; it is only read, and
    ignored (with a log line) when the run resumes from its backup.

    Raises:
        TrainingError: the run cannot start (nothing was written).
        TrainingFailed: the run stopped (diverged, disk full, corrupt data); the last
            complete backup and checkpoints are intact.
    """
    from gscnn_tf.model import GatedSCNN

    if progress not in PROGRESS_MODES:
        raise ValueError(f"progress={progress!r}: expected one of {', '.join(PROGRESS_MODES)}")
    if progress == "auto":
        progress = "bar" if sys.stdout.isatty() else "lines"
    tcfg = cfg.train
    strategy = make_strategy(tcfg)  # first: may split the CPU into logical devices
    if tcfg.seed is not None:
        keras.utils.set_random_seed(tcfg.seed)
    if tcfg.mixed_precision:
        keras.config.set_dtype_policy("mixed_float16")
    chief = cb.is_chief()
    model_dir = tcfg.model_dir
    backup_dir = os.path.join(model_dir, cb.BACKUP_DIR)
    # Everything that can refuse the run happens before the first write.
    backup = None if fresh else cb.read_backup(backup_dir)
    init_path = None
    if tcfg.init_checkpoint:
        # Before the config check: the imported official run's config names its own directory
        # as model_dir, and the config check's remedies (--fresh, --allow-config-change) would
        # delete or overwrite the imported weights.
        init_path = _check_init_source(tcfg.init_checkpoint, model_dir, resolve=backup is None)
    if not fresh:
        check_config_change(cfg, allow_config_change)
    if require_resume and backup is None:
        raise TrainingError(f"--resume: no backup in {backup_dir}")
    train_records, val_records = _check_data(cfg)
    steps_per_epoch = _steps_per_epoch(cfg, train_records)
    total_steps = steps_per_epoch * tcfg.epochs
    train_ds, val_ds = _build_datasets(cfg, strategy, tcfg.seed, val_records)
    init_weights = None
    if init_path is not None:
        init_weights = _init_weights(cfg, init_path)
    elif tcfg.init_checkpoint:
        log.info("train.init_checkpoint %s is ignored: %s resumes from its backup (step %d), which holds the "
                 "weights it started from and everything trained since", tcfg.init_checkpoint, model_dir,
                 backup["global_step"])

    with strategy.scope():
        model = GatedSCNN(cfg.model, cfg.loss, cfg.dataset)
        if init_weights is not None:
            _set_init_weights(model, init_weights, init_path)
            log.info("fine-tuning from %s (%s)", init_path, tcfg.init_checkpoint)
            del init_weights
        model.compile(optimizer=build_optimizer(tcfg, total_steps), seed=tcfg.seed,
                      jit_compile=resolve_jit_compile(tcfg, strategy))
        model.optimizer.build(model.trainable_variables)  # before restoring its state
        global_step = 0
        if backup is not None:
            try:
                model.load_weights(backup["weights"])
            except (ValueError, OSError) as exc:
                raise TrainingError(f"{backup['weights']}: cannot restore the backup ({exc}); rerun with --fresh") from exc
            bad = non_finite_weights(model, model.optimizer.variables)
            if bad:
                raise TrainingError(f"{backup['weights']}: the backup holds non-finite weights ({bad[0]}, ...); "
                                    "rerun with --fresh to start again")
            global_step = int(model.optimizer.iterations.numpy())
            log.info("resuming from %s at step %d (epoch %d)", backup["weights"], global_step, global_step // steps_per_epoch + 1)

    if global_step >= total_steps:
        log.info("run already complete (%d/%d steps)", global_step, total_steps)

    # From here on the run directory is written.
    best = None
    if chief:
        if fresh:
            _discard_run(model_dir)
        os.makedirs(model_dir, exist_ok=True)
        _remove_stale_temporaries(model_dir)
        cb.remove_stale_backups(backup_dir, keep=backup["dir"] if backup else None)
        config_path = os.path.join(model_dir, CONFIG_NAME)
        with writing(config_path):
            save_config(cfg, config_path)
    if backup is not None:
        best = backup.get("best") or cb.best_from_csv(os.path.join(model_dir, cb.METRICS_CSV), "val_miou")
        if chief:
            cb.complete_epoch(model, model_dir, backup)  # writes a kill may have cut off

    logs_dir = os.path.join(model_dir, "logs")
    checkpointer = cb.RunCheckpointer(model_dir, save_freq=tcfg.backup_save_freq, best=best, write=chief)
    if backup is not None:
        checkpointer.last_backup_step = global_step
    callbacks = [checkpointer]
    if chief:
        callbacks.append(keras.callbacks.TensorBoard(logs_dir, write_graph=False, update_freq="epoch", profile_batch=0))
        if progress == "lines":
            # Keras' bar writes ANSI colours, \b and \r (it always assumes a terminal on POSIX).
            callbacks.append(cb.EpochLines(tcfg.epochs))

    fit_kwargs = dict(
        validation_data=val_ds, validation_steps=tcfg.validation_steps, validation_freq=tcfg.validation_freq,
        callbacks=callbacks,
        shuffle=False,  # the tf.data pipeline shuffles; Keras would warn that it ignores shuffle=True
        verbose=1 if chief and progress == "bar" else 0,
    )
    started = time.time()
    history: dict = {}
    epoch, step_in_epoch = divmod(global_step, steps_per_epoch)
    with _naming_bad_data(cfg):
        if chief and val_ds is not None and tcfg.image_summaries:
            images, labels = _first_examples(val_ds, tcfg.image_summaries)
            if images is not None:
                callbacks.append(cb.ImageSummaries(images, labels, logs_dir, colors=cfg.dataset.class_colors))
        if step_in_epoch and epoch < tcfg.epochs:
            # Finish the interrupted epoch first, then continue with whole epochs.
            h = model.fit(train_ds, initial_epoch=epoch, epochs=epoch + 1,
                            steps_per_epoch=steps_per_epoch - step_in_epoch, **fit_kwargs)
            history.update({k: list(v) for k, v in h.history.items()})
            epoch += 1
        if epoch < tcfg.epochs:
            h = model.fit(train_ds, initial_epoch=epoch, epochs=tcfg.epochs, steps_per_epoch=steps_per_epoch, **fit_kwargs)
            for k, v in h.history.items():
                history.setdefault(k, []).extend(v)

    summary = {
        "model_dir": os.path.abspath(model_dir),
        "weights_fingerprint": weights_fingerprint(model),
        "global_step": int(model.optimizer.iterations.numpy()),
        "steps_per_epoch": steps_per_epoch,
        "epochs": tcfg.epochs,
        "replicas": strategy.num_replicas_in_sync,
        "resumed_from_step": global_step if backup is not None else None,
        "seconds": round(time.time() - started, 1),
        "history": {k: [float(x) for x in v] for k, v in history.items()},
    }
    bad = non_finite_weights(model)
    if bad:  # the checkpointer stops a diverging run first; this guards model.keras on its own
        raise TrainingFailed(f"training diverged: {bad[0]} is not finite; model.keras was not written")
    if chief:
        path = os.path.join(model_dir, FINAL_MODEL)
        with writing(path):
            cb.ensure_free_space(path, model.weights)
            with atomic_path(path, suffix=".keras") as tmp:
                model.save(tmp)
        path = os.path.join(model_dir, LAST_WEIGHTS)
        if not os.path.isfile(path):
            with writing(path):
                cb.save_weights_atomic(model, path)
        path = os.path.join(model_dir, SUMMARY_NAME)
        with writing(path):
            atomic_write_text(path, json.dumps(summary, indent=2))
    return summary
