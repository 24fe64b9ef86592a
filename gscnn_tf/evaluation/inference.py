"""Multi-scale + flip inference of a segmentation model (the evaluation's predictions).

For every scale ``s`` the image is resized bilinearly to
``(round(H*s/8)*8, round(W*s/8)*8)`` (at least 8; no resize when that equals the input
size), the model's ``seg_logits`` are resized bilinearly back to H x W and turned into
softmax probabilities; with ``flip`` the horizontally flipped image is also run and its
probabilities flipped back. The prediction is the arg-max of the mean of all these
probability maps. (Serving-graph prediction of files is :mod:`gscnn_tf.prediction.files`.)
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np
import tensorflow as tf


def stride_aligned_size(height: int, width: int, scale: float, multiple: int = 8) -> tuple:
    """Input size for one evaluation scale: H*s and W*s rounded (half up) to the nearest multiple of 8 (>= 8).

    Not :func:`gscnn_tf.data.augment.scaled_size`, which rounds to the nearest pixel: the
    augmentation crops its output afterwards, while this size is fed to the model as it is.
    """
    def one(x: int) -> int:
        return max(multiple, int(math.floor(x * scale / multiple + 0.5)) * multiple)

    return one(height), one(width)


def _seg_logits(outputs):
    if isinstance(outputs, dict):
        return outputs["seg_logits"]
    if isinstance(outputs, (list, tuple)):
        return outputs[0]
    return outputs


class MultiScalePredictor:
    """Multi-scale + flip inference; see the module docstring.

    ``probabilities(image)`` -> (1, H, W, K) mean softmax; ``labels(image, out_size)`` ->
    (h, w) int32 NumPy arg-max after resizing the probabilities to ``out_size`` (default
    the input size). One ``tf.function`` trace per distinct input shape.
    """

    def __init__(self, model, scales: Sequence[float] = (1.0,), flip: bool = False):
        if not scales:
            raise ValueError("at least one evaluation scale is needed")
        for s in scales:
            if s <= 0:
                raise ValueError(f"evaluation scales must be positive, got {s}")
        self.model = model
        self.scales = [float(s) for s in scales]
        self.flip = bool(flip)
        self._labels_fn = tf.function(self._labels_graph)

    def probabilities(self, image):
        image = tf.convert_to_tensor(image, tf.float32)
        height, width = int(image.shape[1]), int(image.shape[2])
        total = None
        count = 0
        for scale in self.scales:
            size = stride_aligned_size(height, width, scale)
            x = image if size == (height, width) else tf.image.resize(image, size, method="bilinear")
            variants = [(x, False)] + ([(tf.reverse(x, axis=[2]), True)] if self.flip else [])
            for inp, flipped in variants:
                logits = tf.cast(_seg_logits(self.model(inp, training=False)), tf.float32)
                if flipped:
                    logits = tf.reverse(logits, axis=[2])
                if tuple(logits.shape[1:3]) != (height, width):
                    logits = tf.image.resize(logits, (height, width), method="bilinear")
                probs = tf.nn.softmax(logits, axis=-1)
                total = probs if total is None else total + probs
                count += 1
        return total / float(count)

    def _labels_graph(self, image, out_size):
        probs = self.probabilities(image)
        same = tf.reduce_all(tf.equal(out_size, tf.shape(probs)[1:3]))
        probs = tf.cond(same, lambda: probs, lambda: tf.image.resize(probs, out_size, method="bilinear"))
        return tf.argmax(probs[0], axis=-1, output_type=tf.int32)

    def labels(self, image, out_size: Optional[Sequence[int]] = None) -> np.ndarray:
        image = tf.convert_to_tensor(image, tf.float32)
        if out_size is None:
            out_size = image.shape[1:3]
        return self._labels_fn(image, tf.constant([int(out_size[0]), int(out_size[1])], tf.int32)).numpy()
