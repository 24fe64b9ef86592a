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
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "mirrored":
        gpus = tf.config.list_physical_devices("GPU")
        if gpus:
            strategy = tf.distribute.MirroredStrategy()
        else:
            configure_logical_cpus(train_config.num_cpu_devices)
            cpus = tf.config.list_logical_devices("CPU")
            n = train_config.num_cpu_devices or len(cpus)
            strategy = tf.distribute.MirroredStrategy(devices=[d.name for d in cpus[:n]])
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
