"""In-graph sniffing of encoded images: format magic bytes, declared sizes, completeness.

TensorFlow ops on the serving graph's ``image_bytes`` elements, run before decoding so that
a request that is not an image, a truncated upload or a decompression bomb is refused with
a message naming the element. The byte signatures themselves live in
:mod:`gscnn_tf.utils.image_formats`.
"""
from __future__ import annotations

import tensorflow as tf

from gscnn_tf.export.signatures import BYTES_INPUT
from gscnn_tf.utils.image_formats import (
    BMP_MAGIC,
    GIF87A,
    GIF89A,
    GIF_MAGIC,
    JPEG_EOI,
    JPEG_SOI,
    PNG_IEND,
    PNG_SIGNATURE,
    WEBP_RIFF,
    WEBP_TAG,
)


def header_reader(data: tf.Tensor, length: int):
    """``head(pos, n)``: bytes ``pos:pos+n`` of ``data`` (scalar or batch) with ``length`` zero bytes appended."""
    padded = tf.strings.join([data, tf.constant(b"\0" * length)])
    return lambda pos, n: tf.strings.substr(padded, pos, n)


def check_recognised(image_bytes: tf.Tensor) -> tf.Tensor:
    """Readable error for elements that are not images at all (before the decoder's).

    Returns a True scalar that depends on the assertion; call only for a non-empty batch.
    """
    head = header_reader(image_bytes, 12)
    known = tf.reduce_any(
        tf.stack(
            [
                tf.equal(head(0, 8), PNG_SIGNATURE),
                tf.equal(head(0, 3), JPEG_SOI),
                tf.equal(head(0, 6), GIF87A),
                tf.equal(head(0, 6), GIF89A),
                tf.equal(head(0, 2), BMP_MAGIC),
                tf.logical_and(tf.equal(head(0, 4), WEBP_RIFF), tf.equal(head(8, 4), WEBP_TAG)),
            ]
        ),
        axis=0,
    )
    first_bad = tf.argmin(tf.cast(known, tf.int32), output_type=tf.int32)
    message = tf.strings.format(
        BYTES_INPUT + "[{}] is not a PNG, JPEG, GIF, BMP or WebP image ({} bytes, unrecognised header)",
        [first_bad, tf.strings.length(tf.gather(image_bytes, first_bad))],
    )
    with tf.control_dependencies([tf.debugging.Assert(tf.reduce_all(known), [message])]):
        return tf.constant(True)


def declared_size(data: tf.Tensor):
    """(height, width) int64 that an encoded image's header declares, (-1, -1) if not read.

    Read from the header alone (PNG IHDR, JPEG SOF via ``extract_jpeg_shape``, GIF logical
    screen, BMP BITMAPINFOHEADER), so ``max_pixels`` can refuse a decompression bomb (a
    few KB that decode to gigabytes) before the decoder allocates it. WebP and unusual
    headers give -1: the check after decoding still covers them.
    """
    head = header_reader(data, 26)

    def uint(pos, n, big_endian):
        digits = tf.cast(tf.io.decode_raw(head(pos, n), tf.uint8), tf.int64)
        weights = tf.constant([256**k for k in (range(n - 1, -1, -1) if big_endian else range(n))], tf.int64)
        return tf.reduce_sum(digits * weights)

    def bmp():
        height = uint(22, 4, False)  # signed: negative for top-down bitmaps
        height = tf.where(height >= 2**31, 2**32 - height, height)
        return height, uint(18, 4, False)

    def jpeg():
        shape = tf.cast(tf.image.extract_jpeg_shape(data), tf.int64)
        return shape[0], shape[1]

    is_png = tf.logical_and(tf.equal(head(0, 8), PNG_SIGNATURE), tf.equal(head(12, 4), b"IHDR"))
    is_bmp = tf.logical_and(tf.equal(head(0, 2), BMP_MAGIC), uint(14, 4, False) >= 40)
    height, width = tf.case(
        [
            (is_png, lambda: (uint(20, 4, True), uint(16, 4, True))),
            (tf.equal(head(0, 3), JPEG_SOI), jpeg),
            (tf.equal(head(0, 3), GIF_MAGIC), lambda: (uint(8, 2, False), uint(6, 2, False))),
            (is_bmp, bmp),
        ],
        default=lambda: (tf.constant(-1, tf.int64), tf.constant(-1, tf.int64)),
        exclusive=True,
    )
    # Headers hold up to 32-bit sizes; capping at 2**31 keeps height * width inside int64.
    return tf.minimum(height, 2**31), tf.minimum(width, 2**31)


def check_complete(data: tf.Tensor, index) -> list:
    """A PNG must contain its IEND chunk and a JPEG an end-of-image marker (FF D9).

    A truncated upload then fails naming the element instead of with the decoder's
    anonymous message. Both always occur in a complete file, so nothing valid is refused.
    """
    head = header_reader(data, 8)
    is_png = tf.equal(head(0, 8), PNG_SIGNATURE)
    is_jpeg = tf.equal(head(0, 3), JPEG_SOI)

    def contains(marker: bytes):
        raw = tf.io.decode_raw(data, tf.uint8)
        k = len(marker)
        size = tf.shape(raw)[0]
        hits = tf.ones([tf.maximum(size - k + 1, 0)], tf.bool)
        for j, byte in enumerate(marker):
            hits = tf.logical_and(hits, tf.equal(raw[j:size - k + 1 + j], byte))
        return tf.reduce_any(hits)

    complete = tf.case([(is_png, lambda: contains(PNG_IEND)), (is_jpeg, lambda: contains(JPEG_EOI))],
                       default=lambda: tf.constant(True), exclusive=True)
    message = tf.where(is_png, *[
        tf.strings.format(BYTES_INPUT + "[{}] is a truncated " + kind + ", {} bytes; send the complete file",
                          [index, tf.strings.length(data)])
        for kind in ("PNG (no IEND chunk)", "JPEG (no end-of-image marker)")])
    return [tf.debugging.Assert(complete, [message])]
