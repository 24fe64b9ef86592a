"""Choosing the tf.distribute strategy from the config.

- ``default``: one device (the first GPU if any, else the CPU).
- ``mirrored``: all local GPUs; with ``train.num_cpu_devices = N > 0`` and no GPU, N logical
  CPU devices (lets the multi-replica code path, SyncBN and loss reduction run in tests).
- ``multi_worker``: MultiWorkerMirroredStrategy; the cluster comes from ``TF_CONFIG``.
"""
from __future__ import annotations

import json
import logging
import os

import tensorflow as tf

log = logging.getLogger(__name__)

STRATEGIES = ("default", "mirrored", "multi_worker")

# One strategy per device set per process: a second MirroredStrategy over the same devices
# reuses the collective instance keys of the first, and its all-reduces (SyncBN, the loss
# counts) then abort with "Shape mismatch in the collective instance".
_STRATEGIES: dict = {}


def mirrored_strategy(devices=None) -> tf.distribute.MirroredStrategy:
    """The process's MirroredStrategy over ``devices`` (None: all local GPUs), created once."""
    key = tuple(devices) if devices else None
    if key not in _STRATEGIES:
        _STRATEGIES[key] = tf.distribute.MirroredStrategy(devices=list(key) if key else None)
    return _STRATEGIES[key]


def cpu_mirrored_strategy(num_devices: int = 2) -> tf.distribute.MirroredStrategy:
    """MirroredStrategy over ``num_devices`` logical CPU devices (no GPU needed)."""
    configure_logical_cpus(num_devices)
    cpus = tf.config.list_logical_devices("CPU")
    if len(cpus) < num_devices:
        raise RuntimeError(f"only {len(cpus)} logical CPU devices; cannot mirror over {num_devices}")
    return mirrored_strategy([d.name for d in cpus[:num_devices]])


def configure_logical_cpus(num_devices: int) -> None:
    """Splits the CPU into ``num_devices`` logical devices; must run before TF touches devices."""
    if num_devices <= 1:
        return
    cpus = tf.config.list_physical_devices("CPU")
    existing = tf.config.get_logical_device_configuration(cpus[0])
    if existing and len(existing) >= num_devices:
        return
    try:
        tf.config.set_logical_device_configuration(
            cpus[0], [tf.config.LogicalDeviceConfiguration() for _ in range(num_devices)]
        )
    except RuntimeError as exc:
        raise RuntimeError(
            f"cannot split the CPU into {num_devices} logical devices: TensorFlow already "
            "initialised its devices (call make_strategy before building anything)"
        ) from exc


def make_strategy(train_config) -> tf.distribute.Strategy:
    name = train_config.strategy
    if name not in STRATEGIES:
        raise ValueError(f"train.strategy={name!r}: expected one of {STRATEGIES}")
    if name == "multi_worker":
        if "TF_CONFIG" not in os.environ:
            raise ValueError("train.strategy=multi_worker needs the TF_CONFIG environment variable")
        cluster = json.loads(os.environ["TF_CONFIG"])
        log.info("MultiWorkerMirroredStrategy: task %s of cluster %s", cluster.get("task"), cluster.get("cluster"))
        configure_logical_cpus(train_config.num_cpu_devices)
        if "multi_worker" not in _STRATEGIES:
            _STRATEGIES["multi_worker"] = tf.distribute.MultiWorkerMirroredStrategy()
        return _STRATEGIES["multi_worker"]
    if name == "mirrored":
        if tf.config.list_physical_devices("GPU"):
            strategy = mirrored_strategy()
        else:
            strategy = cpu_mirrored_strategy(train_config.num_cpu_devices or len(tf.config.list_logical_devices("CPU")))
        log.info("MirroredStrategy over %d replicas", strategy.num_replicas_in_sync)
        return strategy
    return tf.distribute.get_strategy()


def resolve_jit_compile(train_config, strategy) -> bool | str:
    """XLA: keras 'auto' on one device; off for multi-replica CPU (keras-team/keras#19005)."""
    jit = train_config.jit_compile
    on_cpu_only = not tf.config.list_physical_devices("GPU")
    if strategy.num_replicas_in_sync > 1 and on_cpu_only:
        if jit is True:
            log.warning("jit_compile=True does not work with MirroredStrategy on CPU; turning XLA off")
        return False
    return jit
