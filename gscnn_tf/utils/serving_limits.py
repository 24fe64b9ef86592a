"""Default resource limits of the serving export (measured figures in docs/SERVING.md).

Kept apart from :mod:`gscnn_tf.export` (which imports TensorFlow) so that the export CLI's
``--help`` can show them without loading TensorFlow. Serving costs about 1 GB of memory per
megapixel that the network sees at once.
"""

DEFAULT_MAX_PIXELS = 2048 * 2048  # per image: 2x a Cityscapes frame (1024x2048)
DEFAULT_MAX_REQUEST_PIXELS = 8 * 1024 * 2048  # per request: 8 Cityscapes frames
DEFAULT_CHUNK_PIXELS = 1024 * 2048  # the network sees at most this many pixels per call (or one image)
