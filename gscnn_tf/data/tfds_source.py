"""TFDS ``cityscapes/semantic_segmentation`` as a data source (``data.source: tfds``).

TFDS cannot download Cityscapes: ``leftImg8bit_trainvaltest.zip`` and
``gtFine_trainvaltest.zip`` must be in ``data.tfds_manual_dir`` the first time (TFDS
then writes its own records under ``data.tfds_data_dir``). Its ``segmentation_label``
holds Cityscapes *label ids*; this module maps them to train ids (255 = ignore) with
:func:`gscnn_tf.data.labels.label_id_to_train_id_lut`, so the stream it yields is the same
``(image uint8 (H, W, 3), label uint8 (H, W) train ids, filename string)`` as the
TFRecord source and the augmentation in :mod:`gscnn_tf.data.pipeline` is shared.

Images stay encoded (``tfds.decode.SkipDecoding``) until after shuffling, so the shuffle
buffer holds PNG bytes, not decoded 1024x2048 images.
"""
from __future__ import annotations

import logging
import os
from typing import Optional

import tensorflow as tf

from gscnn_tf.data.labels import label_id_to_train_id_lut

logger = logging.getLogger(__name__)

# Our split names -> TFDS split names.
SPLITS = {"train": "train", "val": "validation", "validation": "validation", "test": "test"}
# What the semantic_segmentation config needs (the builder's own list is preferred).
DEFAULT_REQUIRED_ZIPS = ("leftImg8bit_trainvaltest.zip", "gtFine_trainvaltest.zip")


class TFDSSourceError(FileNotFoundError):
    """The TFDS dataset is not prepared and cannot be prepared from the manual dir."""


def label_ids_to_train_ids(label_ids: tf.Tensor) -> tf.Tensor:
    """Maps a uint8 tensor of Cityscapes label ids to uint8 train ids (255 = ignore)."""
    lut = tf.constant(label_id_to_train_id_lut(), dtype=tf.uint8)
    return tf.gather(lut, tf.cast(label_ids, tf.int32))


def required_zips(builder=None) -> tuple:
    """The zip files the builder reads from its manual dir."""
    try:
        roots = builder.builder_config.zip_root  # {key: (zip_name, root_dir)}
        names = tuple(sorted({v[0] for v in roots.values()}))
        if names:
            return names
    except AttributeError:
        pass
    return DEFAULT_REQUIRED_ZIPS


def check_manual_dir(manual_dir: Optional[str], zips=DEFAULT_REQUIRED_ZIPS, name: str = "") -> None:
    """Raises :class:`TFDSSourceError` naming the directory and the missing zips."""
    what = f"TFDS {name!r}" if name else "TFDS Cityscapes"
    if not manual_dir:
        raise TFDSSourceError(
            f"{what} is not prepared and data.tfds_manual_dir is not set; download "
            f"{', '.join(zips)} from cityscapes-dataset.com into a folder and set "
            "data.tfds_manual_dir to it"
        )
    if not tf.io.gfile.isdir(manual_dir):
        raise TFDSSourceError(f"{what}: data.tfds_manual_dir {manual_dir!r} is not a directory")
    missing = [z for z in zips if not tf.io.gfile.exists(os.path.join(manual_dir, z))]
    if missing:
        raise TFDSSourceError(
            f"{what}: data.tfds_manual_dir {manual_dir!r} lacks {', '.join(missing)} "
            f"(needs {', '.join(zips)}, from cityscapes-dataset.com)"
        )


def prepare_builder(data_config):
    """Returns a prepared TFDS builder, preparing it from the manual dir if needed."""
    import tensorflow_datasets as tfds

    builder = tfds.builder(data_config.tfds_name, data_dir=data_config.tfds_data_dir)
    if not builder.is_prepared():
        check_manual_dir(data_config.tfds_manual_dir, required_zips(builder), data_config.tfds_name)
        logger.info("preparing %s from %s (once)", data_config.tfds_name, data_config.tfds_manual_dir)
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(manual_dir=data_config.tfds_manual_dir)
        )
    return builder


def tfds_records(data_config, split: str, training: bool, seed=None, input_context=None, deterministic=True):
    """The raw (still encoded) TFDS elements of ``split`` ("train", "val" or "test").

    With ``input_context`` TFDS shards its files per input pipeline.
    """
    import tensorflow_datasets as tfds

    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {sorted(SPLITS)}")
    builder = prepare_builder(data_config)
    read_config = tfds.ReadConfig(
        input_context=input_context,
        shuffle_seed=seed if training else None,
        interleave_cycle_length=(16 if training else 1),
        enable_ordering_guard=False,
    )
    if not deterministic:
        options = tf.data.Options()
        options.deterministic = False
        read_config.options = options
    return builder.as_dataset(
        split=SPLITS[split],
        shuffle_files=training,
        read_config=read_config,
        decoders={
            "image_left": tfds.decode.SkipDecoding(),
            "segmentation_label": tfds.decode.SkipDecoding(),
        },
    )


def decode_tfds_record(record: dict) -> tuple:
    """TFDS element (encoded) -> ``(image uint8 (H, W, 3), label uint8 (H, W) train ids, filename)``."""
    image = tf.io.decode_png(record["image_left"], channels=3)
    label_ids = tf.io.decode_png(record["segmentation_label"], channels=1)[..., 0]
    return image, label_ids_to_train_ids(label_ids), record["image_id"]
