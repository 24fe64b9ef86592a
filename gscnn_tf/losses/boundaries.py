"""Ground-truth semantic boundary maps from train-id label maps, in TensorFlow ops.

Definition (the official GSCNN recipe, docs/PAPER.md section 2, with one deliberate
difference): a pixel ``p`` whose label is not ``ignore_label`` is a boundary pixel iff
some pixel ``q`` of the image with Euclidean distance ``|p - q| <= radius`` has a
different label; ``ignore_label`` counts as a different label. All classes take part,
class 0 ("road") included (the official code skips it, GSCNN issue 19). Ignore pixels
are never boundary pixels.

This equals the official per-class ``scipy.ndimage.distance_transform_edt`` recipe
(``edt(mask_c) + edt(1 - mask_c) <= radius``, union over classes), except at the image
border: the official code zero-pads the one-hot masks, which turns every pixel within
``radius`` of the image border into a boundary pixel. A crop border is not a semantic
boundary, so we only look at pixels inside the image (equivalently: edge padding).

Works on ``(H, W)`` and ``(B, H, W)`` maps with dynamic sizes, so it can run inside
``tf.data`` after augmentation (crops padded with the ignore label stay non-boundary).
"""
from __future__ import annotations

import math

import tensorflow as tf

from gscnn_tf.data.labels import IGNORE_LABEL


def _disc_offsets(radius: float) -> list:
    """All integer offsets (dy, dx) != (0, 0) with dy^2 + dx^2 <= radius^2."""
    r = int(math.floor(radius))
    r2 = radius * radius + 1e-9  # radius 2 must include (0, 2) and (2, 0) exactly
    return [
        (dy, dx)
        for dy in range(-r, r + 1)
        for dx in range(-r, r + 1)
        if (dy, dx) != (0, 0) and dy * dy + dx * dx <= r2
    ]


def _shift_differs(label: tf.Tensor, dy: int, dx: int) -> tf.Tensor:
    """Bool map: label[y, x] != label[y + dy, x + dx]; False where (y+dy, x+dx) is outside.

    ``label`` is (B, H, W). Slicing (not padding) keeps out-of-image neighbours out.
    """
    h0, h1 = max(0, -dy), max(0, dy)  # rows of p that have a neighbour at +dy
    w0, w1 = max(0, -dx), max(0, dx)

    def rows(x, start, stop):
        return x[:, start : (None if stop == 0 else -stop)]

    def cols(x, start, stop):
        return x[:, :, start : (None if stop == 0 else -stop)]

    p = cols(rows(label, h0, h1), w0, w1)
    q = cols(rows(label, h1, h0), w1, w0)
    differs = tf.not_equal(p, q)
    # Images smaller than the offset give empty slices; padding restores (H, W).
    return tf.pad(differs, [[0, 0], [h0, h1], [w0, w1]], constant_values=False)


def boundary_map(label, radius: float = 2.0, ignore_label: int = IGNORE_LABEL) -> tf.Tensor:
    """Binary semantic boundary map of a train-id label map.

    Args:
        label: (H, W) or (B, H, W) integer train ids (any int dtype, or uint8);
            ``ignore_label`` marks unlabelled pixels.
        radius: Euclidean radius in pixels (official code: 2).
        ignore_label: label value that is never a boundary and counts as different.

    Returns:
        float32 tensor of ``label``'s shape with values in {0, 1}; 0 at ignore pixels.
    """
    label = tf.convert_to_tensor(label)
    if label.dtype not in (tf.int32, tf.int64):
        label = tf.cast(label, tf.int32)
    rank = label.shape.rank
    if rank not in (2, 3):
        raise ValueError(f"boundary_map: label must be (H, W) or (B, H, W), got shape {label.shape}")
    batched = label if rank == 3 else label[tf.newaxis]

    is_boundary = tf.zeros_like(batched, dtype=tf.bool)
    for dy, dx in _disc_offsets(radius):
        is_boundary = tf.logical_or(is_boundary, _shift_differs(batched, dy, dx))
    is_boundary = tf.logical_and(is_boundary, tf.not_equal(batched, ignore_label))
    out = tf.cast(is_boundary, tf.float32)
    return out if rank == 3 else out[0]
