"""Byte signatures ("magic bytes") of the encoded image formats the package reads.

One home for them: the converter's header pre-pass (:mod:`gscnn_tf.data.cityscapes`), the
input pipeline's record check (:mod:`gscnn_tf.data.pipeline`) and the serving graph's
request checks (:mod:`gscnn_tf.export.image_headers`) all compare against these.
"""

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"  # the 8 bytes every PNG file starts with
PNG_IEND = b"IEND"  # type of the last chunk: a PNG without it is truncated
JPEG_SOI = b"\xff\xd8\xff"  # start-of-image marker and the first byte of the next marker
JPEG_EOI = b"\xff\xd9"  # end-of-image marker: a JPEG without it is truncated
GIF_MAGIC = b"GIF"
GIF87A = b"GIF87a"
GIF89A = b"GIF89a"
BMP_MAGIC = b"BM"
WEBP_RIFF = b"RIFF"  # bytes 0..3 of a WebP file
WEBP_TAG = b"WEBP"  # bytes 8..11 of a WebP file
