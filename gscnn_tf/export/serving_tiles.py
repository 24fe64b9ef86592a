"""Tiled inference inside the serving graph: one large image, one tile of the network at a time.

The same sliding window as :mod:`gscnn_tf.deploy.tiles` (NumPy, used by ``predict.py`` and the
file runners), written again in TensorFlow ops because the SavedModel must tile on its own,
without Python, for any image size it receives. Tiles of (th, tw) step by ``tile - overlap``;
the last tile of each row and column ends at the border. Each tile's softmax probabilities and
edge probability are weighted by :func:`gscnn_tf.deploy.tiles.blend_window` and summed; rows of
tiles are processed one after the other and, once no later tile covers a band of image rows,
that band's classes (and edge, and probabilities when requested) are written out, so the
graph holds one row of tiles' sums, (th x W x (K + 2)) float32, not a whole-image buffer.
Tests compare it with :func:`gscnn_tf.deploy.tiles.blend_tiles`.
"""
from __future__ import annotations

from typing import Callable, Sequence

import tensorflow as tf

from gscnn_tf.deploy.tiles import blend_window


def tile_starts_tensor(length, tile: int, overlap: int):
    """tf.int32 start offsets along an axis of ``length`` (>= ``tile``) pixels, as
    :func:`gscnn_tf.deploy.tiles.tile_starts`."""
    step = tile - overlap
    count = tf.where(length > tile, (length - tile + step - 1) // step + 1, 1)
    return tf.minimum(tf.range(count) * step, length - tile)


def run_tiled_image(forward: Callable, image, tile: Sequence[int], overlap: int, num_classes: int,
                    with_probabilities: bool, classes_dtype) -> dict:
    """``image``: float32 (1, H, W, 3), each side at least the tile's -> {"classes": (H, W),
    "edge": (H, W)[, "probabilities": (H, W, K)]}; ``forward(x)`` -> {"seg_logits", "edge"}."""
    th, tw = int(tile[0]), int(tile[1])
    k = int(num_classes)
    shape = tf.shape(image)
    height, width = shape[1], shape[2]
    rows = tile_starts_tensor(height, th, overlap)
    cols = tile_starts_tensor(width, tw, overlap)
    n_rows, n_cols = tf.size(rows), tf.size(cols)
    window = tf.constant(blend_window(th, tw, overlap))[..., None]  # (th, tw, 1)

    def row(r, band, weight, classes, edges, probs):
        top = rows[r]
        shift = tf.where(r > 0, top - rows[tf.maximum(r - 1, 0)], 0)
        # Keep the rows this row of tiles shares with the previous one, zeros below.
        band = tf.ensure_shape(tf.concat([band[shift:], tf.zeros(tf.stack([shift, width, k + 1]))], axis=0),
                               [th, None, k + 1])
        weight = tf.ensure_shape(tf.concat([weight[shift:], tf.zeros(tf.stack([shift, width, 1]))], axis=0),
                                 [th, None, 1])

        def col(c, band, weight):
            left = cols[c]
            x = tf.reshape(image[:, top:top + th, left:left + tw, :], [1, th, tw, 3])
            out = forward(x)
            values = tf.concat([tf.nn.softmax(out["seg_logits"][0], axis=-1), out["edge"][0]], axis=-1)
            paddings = tf.stack([[0, 0], [left, width - left - tw], [0, 0]])
            return c + 1, band + tf.pad(values * window, paddings), weight + tf.pad(window, paddings)

        _, band, weight = tf.while_loop(lambda c, *_: c < n_cols, col, [tf.constant(0), band, weight],
                                        parallel_iterations=1)
        end = tf.where(r + 1 < n_rows, rows[tf.minimum(r + 1, n_rows - 1)], height)
        blended = band[:end - top] / weight[:end - top]  # window weights are > 0
        classes = classes.write(r, tf.cast(tf.argmax(blended[..., :k], axis=-1), classes_dtype))
        edges = edges.write(r, blended[..., k])
        if with_probabilities:
            probs = probs.write(r, blended[..., :k])
        return r + 1, band, weight, classes, edges, probs

    def array(dtype, element_shape):
        return tf.TensorArray(dtype, size=n_rows, infer_shape=False, element_shape=element_shape)

    loop_vars = [tf.constant(0), tf.zeros(tf.stack([th, width, k + 1])), tf.zeros(tf.stack([th, width, 1])),
                 array(classes_dtype, [None, None]), array(tf.float32, [None, None]),
                 array(tf.float32, [None, None, k] if with_probabilities else [None])]
    _, _, _, classes, edges, probs = tf.while_loop(lambda r, *_: r < n_rows, row, loop_vars, parallel_iterations=1)
    result = {"classes": classes.concat(), "edge": edges.concat()}
    if with_probabilities:
        result["probabilities"] = probs.concat()
    return result
