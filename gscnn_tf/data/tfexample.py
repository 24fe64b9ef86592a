"""tf.Example encoding and parsing with TF Model Garden's segmentation keys.

Records written here are interchangeable with Model Garden's
(``official/vision/data/tfrecord_lib.py`` / ``segmentation_input.py``): the image keeps
its original encoded bytes (no re-encoding) and the label is a single-channel PNG of
*train ids* (255 = ignore).
"""
from __future__ import annotations

import tensorflow as tf

from gscnn_tf.data.labels import IGNORE_LABEL

IMAGE_ENCODED = "image/encoded"
IMAGE_FILENAME = "image/filename"
IMAGE_FORMAT = "image/format"
IMAGE_HEIGHT = "image/height"
IMAGE_WIDTH = "image/width"
IMAGE_CHANNELS = "image/channels"
LABEL_ENCODED = "image/segmentation/class/encoded"
LABEL_FORMAT = "image/segmentation/class/format"

_FEATURES = {
    IMAGE_ENCODED: tf.io.FixedLenFeature((), tf.string),
    IMAGE_FILENAME: tf.io.FixedLenFeature((), tf.string, default_value=""),
    IMAGE_FORMAT: tf.io.FixedLenFeature((), tf.string, default_value="png"),
    IMAGE_HEIGHT: tf.io.FixedLenFeature((), tf.int64),
    IMAGE_WIDTH: tf.io.FixedLenFeature((), tf.int64),
    IMAGE_CHANNELS: tf.io.FixedLenFeature((), tf.int64, default_value=3),
    LABEL_ENCODED: tf.io.FixedLenFeature((), tf.string, default_value=""),
    LABEL_FORMAT: tf.io.FixedLenFeature((), tf.string, default_value="png"),
}


def _bytes(value: bytes) -> tf.train.Feature:
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


def _int(value: int) -> tf.train.Feature:
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(value)]))


def make_example(
    image_bytes: bytes,
    label_png_bytes: bytes | None,
    filename: str,
    height: int,
    width: int,
    image_format: str = "png",
    channels: int = 3,
) -> tf.train.Example:
    """Builds a tf.Example; ``label_png_bytes`` is None for unlabeled (test split) images."""
    feature = {
        IMAGE_ENCODED: _bytes(image_bytes),
        IMAGE_FILENAME: _bytes(filename.encode("utf-8")),
        IMAGE_FORMAT: _bytes(image_format.encode("utf-8")),
        IMAGE_HEIGHT: _int(height),
        IMAGE_WIDTH: _int(width),
        IMAGE_CHANNELS: _int(channels),
    }
    if label_png_bytes is not None:
        feature[LABEL_ENCODED] = _bytes(label_png_bytes)
        feature[LABEL_FORMAT] = _bytes(b"png")
    return tf.train.Example(features=tf.train.Features(feature=feature))


def parse_example(serialized: tf.Tensor) -> dict:
    """Parses one serialized record into raw tensors (no decoding).

    Returns a dict with the keys above; decode with :func:`decode_example`.
    """
    return tf.io.parse_single_example(serialized, _FEATURES)


def decode_example(parsed: dict) -> tuple:
    """Decodes a parsed record into ``(image uint8 (H, W, 3), label uint8 (H, W), filename)``.

    A record without a label yields an all-ignore (255) label map of the image's size.
    """
    image = tf.io.decode_image(parsed[IMAGE_ENCODED], channels=3, expand_animations=False)
    image = tf.ensure_shape(image, [None, None, 3])
    has_label = tf.strings.length(parsed[LABEL_ENCODED]) > 0
    label = tf.cond(
        has_label,
        lambda: tf.io.decode_png(parsed[LABEL_ENCODED], channels=1)[..., 0],
        lambda: tf.fill(tf.shape(image)[:2], tf.constant(IGNORE_LABEL, tf.uint8)),
    )
    return image, label, parsed[IMAGE_FILENAME]
