"""tf.data input pipelines for training and evaluation (docs/ARCHITECTURE.md, "Targets").

Training (``build_train_dataset``)::

    sorted shard list -> shard per input pipeline -> shuffle files -> interleave records
    -> shuffle serialized records -> [repeat] -> [enumerate: per-element seeds]
    -> parse + decode -> augment (scale, crop/pad, flip, jitter, blur)
    -> batch (drop remainder) -> boundary targets -> prefetch

yields ``(image (B, h, w, 3) float32 RGB in 0..255, {"label": (B, h, w) int32,
"boundary": (B, h, w) float32})``. Boundary maps are computed on the *augmented*
labels. The images are not normalised: :class:`gscnn_tf.model.GatedSCNN` does that
itself for its backbone. Evaluation (``build_eval_dataset``) yields the same structure for full images
(batch 1, ordered, no augmentation, optional ``eval_scale`` resize), plus the
filename as a third element when asked.

``data.source`` picks the records: ``tfrecord`` (TF Model Garden tf.Example shards,
:mod:`gscnn_tf.data.tfexample`) or ``tfds`` (:mod:`gscnn_tf.data.tfds_source`); both
become the same ``(image uint8, label uint8 train ids, filename)`` stream before
augmentation.

Determinism: with ``data.deterministic`` the file and record shuffles are seeded, the
interleave and parallel maps keep their order, and every random draw of the
augmentation is ``tf.random.stateless_*`` on a seed derived from ``(seed, element
index, input pipeline id, file name)``; the same seed gives the same batches. Otherwise
the order may vary and the augmentation uses the fast stateful ops.

Image/label bytes that are not PNG/JPEG, and a label whose size differs from its
image's, fail with the shard path and the image's filename in the message (prefix
:data:`gscnn_tf.data.shard_checks.RECORD_ERROR`). Checks of the shard files themselves
(against the converter's manifest, corrupt records, one-line read errors) are in
:mod:`gscnn_tf.data.shard_checks`.
"""
from __future__ import annotations

import logging
from typing import Optional

import tensorflow as tf

from gscnn_tf.data import augment as aug
from gscnn_tf.data.labels import IGNORE_LABEL
from gscnn_tf.data.shard_checks import RECORD_ERROR, list_shards
from gscnn_tf.data.tfexample import IMAGE_ENCODED, IMAGE_FILENAME, LABEL_ENCODED, decode_example, parse_example
from gscnn_tf.losses.boundaries import boundary_map
from gscnn_tf.utils.image_formats import JPEG_SOI, PNG_SIGNATURE

logger = logging.getLogger(__name__)

AUTOTUNE = tf.data.AUTOTUNE
_DEFAULT_SEED = 0


# ----------------------------------------------------------------------------- targets


def boundary_targets(labels: tf.Tensor, radius: float, ignore_label: int = IGNORE_LABEL) -> tf.Tensor:
    """GT boundary maps of a batch of train-id labels (B, H, W) -> float32 (B, H, W)."""
    return tf.cast(boundary_map(labels, radius, ignore_label), tf.float32)


# ----------------------------------------------------------------------------- helpers


def dataset_options(deterministic: bool) -> tf.data.Options:
    options = tf.data.Options()
    options.deterministic = deterministic
    # We shard (by file) ourselves, per input pipeline.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return options


def _check_encoded(data: tf.Tensor, what: str, path: tf.Tensor, filename: tf.Tensor, allow_empty: bool) -> tf.Tensor:
    ok = tf.logical_or(tf.equal(tf.strings.substr(data, 0, len(PNG_SIGNATURE)), PNG_SIGNATURE),
                       tf.equal(tf.strings.substr(data, 0, len(JPEG_SOI)), JPEG_SOI))
    if allow_empty:
        ok = tf.logical_or(ok, tf.equal(tf.strings.length(data), 0))
    return tf.debugging.Assert(
        ok, [f"{RECORD_ERROR}: {what} is not a PNG/JPEG image; shard:", path, "image/filename:", filename], summarize=1
    )


def _decode_tfrecord(path: tf.Tensor, serialized: tf.Tensor) -> tuple:
    parsed = parse_example(serialized)
    filename = parsed[IMAGE_FILENAME]
    checks = [
        _check_encoded(parsed[IMAGE_ENCODED], "image/encoded", path, filename, False),
        _check_encoded(parsed[LABEL_ENCODED], "image/segmentation/class/encoded", path, filename, True),
    ]
    with tf.control_dependencies(checks):
        parsed = {k: tf.identity(v) for k, v in parsed.items()}
    image, label, filename = decode_example(parsed)
    # A label of another size would be cropped/padded out of register with its image.
    image_hw, label_hw = tf.shape(image)[:2], tf.shape(label)[:2]
    same = tf.debugging.Assert(
        tf.reduce_all(tf.equal(image_hw, label_hw)),
        [f"{RECORD_ERROR}: label size differs from the image's (label HxW, image HxW:", label_hw, image_hw,
         "); shard:", path, "image/filename:", filename], summarize=2,
    )
    with tf.control_dependencies([same]):
        return tf.identity(image), tf.identity(label), filename


def _tfrecord_source(pattern: str, field_name: str, training: bool, seed, input_context, deterministic: bool):
    """-> (dataset of raw elements, parse_fn or None, decode_fn) for TFRecord shards."""
    files = list_shards(pattern, field_name)
    ds = tf.data.Dataset.list_files(pattern, shuffle=False)  # sorted
    if input_context is not None and input_context.num_input_pipelines > 1:
        n, i = input_context.num_input_pipelines, input_context.input_pipeline_id
        if len(files) < n:
            raise ValueError(f"{field_name} = {pattern!r} matches {len(files)} file(s), fewer than the {n} input pipelines")
        ds = ds.shard(n, i)
    if training:
        # Deterministic mode: the same order for every iterator of this dataset (a seeded
        # reshuffle depends on how many iterators were made before, which differs between
        # a plain dataset and distribute_datasets_from_function).
        ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=not deterministic)
        ds = ds.interleave(
            lambda f: tf.data.TFRecordDataset(f, buffer_size=8 << 20).map(lambda r: (f, r)),
            cycle_length=min(len(files), 16),
            block_length=1,
            num_parallel_calls=AUTOTUNE,
            deterministic=deterministic,
        )
    else:  # ordered: file after file
        ds = ds.interleave(lambda f: tf.data.TFRecordDataset(f).map(lambda r: (f, r)), cycle_length=1)
    return ds, (lambda path, rec: (path, parse_example(rec))), _decode_tfrecord


def _source(data_config, split: str, training: bool, seed, input_context, deterministic: bool):
    """Dispatch on ``data.source``: -> (raw dataset, parse_fn, decode_fn).

    ``decode_fn(*raw)`` gives ``(image uint8 (H, W, 3), label uint8 (H, W), filename)``;
    ``parse_fn(*raw)`` is the benchmark's "read + parse" stage.
    """
    source = data_config.source
    if source == "tfrecord":
        field_name = {"train": "train_pattern", "val": "val_pattern", "validation": "val_pattern",
                      "test": "test_pattern"}.get(split)
        if field_name is None:
            raise ValueError(f"split {split!r}: the tfrecord source has train, val and test "
                             "(data.train_pattern, data.val_pattern, data.test_pattern)")
        return _tfrecord_source(getattr(data_config, field_name), "data." + field_name, training, seed,
                                input_context, deterministic)
    if source == "tfds":
        from gscnn_tf.data import tfds_source

        ds = tfds_source.tfds_records(data_config, split, training, seed, input_context, deterministic)
        return ds, (lambda rec: rec), tfds_source.decode_tfds_record
    raise ValueError(f"unknown data.source {source!r}; expected 'tfrecord' or 'tfds'")


# ----------------------------------------------------------------------------- datasets


def _stage_seed(seed: Optional[int], deterministic: bool) -> Optional[int]:
    """The seed a training stage uses: ``seed``, or the default one in deterministic mode."""
    return _DEFAULT_SEED if seed is None and deterministic else seed


def shuffled_train_records(data_config, seed: Optional[int] = None,
                           input_context: Optional[tf.distribute.InputContext] = None, repeat: bool = False) -> tuple:
    """The first stage of :func:`build_train_dataset`: this pipeline's training records, shuffled.

    Returns ``(records, parse_fn, decode_fn)``: mapping ``decode_fn`` over ``records`` gives
    ``(image uint8, label uint8, filename)`` (``parse_fn`` stops after parsing); the
    benchmark times these stages one by one. ``seed`` as in :func:`build_train_dataset`.
    """
    deterministic = bool(data_config.deterministic)
    seed = _stage_seed(seed, deterministic)
    ds, parse_fn, decode_fn = _source(data_config, "train", True, seed, input_context, deterministic)
    if repeat:
        ds = ds.repeat()
    if data_config.shuffle_buffer > 1:
        # After repeat(), the buffer mixes across epoch boundaries, so epochs differ in order
        # even without reshuffling; deterministic mode must not reshuffle per iterator (above).
        ds = ds.shuffle(data_config.shuffle_buffer, seed=seed, reshuffle_each_iteration=not deterministic)
    return ds, parse_fn, decode_fn


def augmented_examples(records: tf.data.Dataset, decode_fn, data_config, seed: Optional[int] = None,
                       pipeline_id: int = 0, ignore_label: int = IGNORE_LABEL) -> tf.data.Dataset:
    """The second stage: decode and augment each record -> ``(image float32 0..255, label int32)``
    (crops padded with ``ignore_label``)."""
    deterministic = bool(data_config.deterministic)
    seed = _stage_seed(seed, deterministic)
    crop_size = [int(v) for v in data_config.crop_size]
    if len(crop_size) != 2 or min(crop_size) < 1:
        raise ValueError(f"data.crop_size must be [height, width], got {data_config.crop_size!r}")

    def augment_one(index, *raw):
        image, label, filename = decode_fn(*raw)
        element_seed = None
        if deterministic:
            # (seed, element index) folded with the input pipeline id and the file name, so
            # an image that lands on the same index in another epoch still gets new draws.
            element_seed = tf.stack([tf.constant(seed, tf.int64), index])
            element_seed = tf.random.experimental.stateless_fold_in(element_seed, pipeline_id)
            name_hash = tf.strings.to_hash_bucket_fast(filename, 2**31 - 1)
            element_seed = tf.random.experimental.stateless_fold_in(element_seed, name_hash)
        image, label = aug.augment_from_config(image, label, data_config, seed=element_seed,
                                               ignore_label=ignore_label)
        return image, tf.cast(label, tf.int32)

    if deterministic:
        return records.enumerate().map(
            lambda index, raw: augment_one(index, *(raw if isinstance(raw, tuple) else (raw,))),
            num_parallel_calls=AUTOTUNE,
            deterministic=True,
        )
    return records.map(lambda *raw: augment_one(None, *raw), num_parallel_calls=AUTOTUNE, deterministic=False)


def build_train_dataset(
    data_config,
    batch_size: int,
    seed: Optional[int] = None,
    input_context: Optional[tf.distribute.InputContext] = None,
    boundary_radius: float = 2.0,
    repeat: bool = False,
    ignore_label: int = IGNORE_LABEL,
) -> tf.data.Dataset:
    """The augmented training dataset (see the module docstring).

    Args:
      data_config: :class:`gscnn_tf.config.DataConfig`.
      batch_size: the *global* batch size; with ``input_context`` each pipeline batches
        ``input_context.get_per_replica_batch_size(batch_size)``.
      seed: base seed for shuffles and (with ``data.deterministic``) the stateless
        augmentation; None means 0 in deterministic mode, unseeded otherwise.
      boundary_radius: ``LossConfig.boundary_radius`` for the GT boundary maps.
      repeat: repeat forever (element seeds keep counting across epochs); otherwise one
        pass per iteration (Keras re-iterates each epoch, reshuffling).
      ignore_label: ``DatasetConfig.ignore_label`` (crop padding, never a boundary).
    """
    deterministic = bool(data_config.deterministic)
    per_replica = input_context.get_per_replica_batch_size(batch_size) if input_context else int(batch_size)
    if per_replica < 1:
        raise ValueError(f"batch size {batch_size} gives {per_replica} per replica")
    pipeline_id = input_context.input_pipeline_id if input_context else 0
    records, _, decode_fn = shuffled_train_records(data_config, seed, input_context, repeat)
    ds = augmented_examples(records, decode_fn, data_config, seed, pipeline_id, ignore_label)
    ds = ds.batch(per_replica, drop_remainder=True, num_parallel_calls=AUTOTUNE, deterministic=deterministic)
    ignore = int(ignore_label)
    ds = ds.map(
        lambda image, label: (image, {"label": label, "boundary": boundary_targets(label, boundary_radius, ignore)}),
        num_parallel_calls=AUTOTUNE,
        deterministic=deterministic,
    )
    return ds.prefetch(AUTOTUNE).with_options(dataset_options(deterministic))


def make_distributed_train_dataset(
    strategy: tf.distribute.Strategy,
    data_config,
    global_batch: int,
    seed: Optional[int] = None,
    boundary_radius: float = 2.0,
    repeat: bool = False,
    ignore_label: int = IGNORE_LABEL,
):
    """``strategy.distribute_datasets_from_function`` over :func:`build_train_dataset`:
    each input pipeline reads its share of the shards and batches
    ``global_batch / num_replicas`` examples per replica."""
    if global_batch % strategy.num_replicas_in_sync:
        raise ValueError(f"global batch {global_batch} is not divisible by {strategy.num_replicas_in_sync} replicas")

    def dataset_fn(input_context):
        return build_train_dataset(
            data_config,
            global_batch,
            seed=seed,
            input_context=input_context,
            boundary_radius=boundary_radius,
            repeat=repeat,
            ignore_label=ignore_label,
        )

    return strategy.distribute_datasets_from_function(dataset_fn)


def build_eval_dataset(
    data_config,
    with_filenames: bool = False,
    input_context: Optional[tf.distribute.InputContext] = None,
    boundary_radius: float = 2.0,
    split: str = "val",
    ignore_label: int = IGNORE_LABEL,
) -> tf.data.Dataset:
    """Full images, no augmentation, batch 1, in file/record order.

    Yields ``(image (1, H, W, 3) float32 RGB in 0..255, {"label": (1, H, W) int32, "boundary": (1, H, W) float32})``
    and, with ``with_filenames``, a third element ``filename`` (1,) string. With
    ``data.eval_scale != 1`` image (bilinear) and label (nearest) are resized to
    ``round(size * eval_scale)``.
    """
    ds, _, decode_fn = _source(data_config, split, False, None, input_context, True)
    scale = float(data_config.eval_scale)
    if scale <= 0:
        raise ValueError(f"data.eval_scale must be > 0, got {scale}")
    ignore = int(ignore_label)

    def prepare(*raw):
        image, label, filename = decode_fn(*raw)
        if scale != 1.0:
            image, label = aug.scale_image_and_label(image, label, scale)
        image = tf.cast(image, tf.float32)
        label = tf.cast(label, tf.int32)
        boundary = boundary_targets(label[None], boundary_radius, ignore)[0]
        targets = {"label": label, "boundary": boundary}
        return (image, targets, filename) if with_filenames else (image, targets)

    ds = ds.map(prepare, num_parallel_calls=AUTOTUNE, deterministic=True)
    return ds.batch(1).prefetch(AUTOTUNE).with_options(dataset_options(True))
