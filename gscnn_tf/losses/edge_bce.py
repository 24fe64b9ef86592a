"""Class-balanced binary cross-entropy of the shape stream's edge map (paper eq. 1, HED weights).

    L = -(1 / N_valid) * sum_valid [ w_pos * b * log(s) + w_neg * (1 - b) * log(1 - s) ]
    w_pos = N_neg / N_valid,  w_neg = N_pos / N_valid

with ``b`` the GT boundary map, ``s`` the predicted edge *probability* and the counts
taken over the global batch (all replicas), ignore pixels excluded. The model's ``edge``
output already went through a sigmoid, so no second sigmoid is applied here (the
official code's double sigmoid, GSCNN issue 62).
"""
from __future__ import annotations

import keras
from keras import ops

from gscnn_tf.data.labels import IGNORE_LABEL
from gscnn_tf.losses.segmentation import DictLoss, global_sum, labels_of


def _squeeze_channel(x):
    return ops.squeeze(x, axis=-1) if len(x.shape) == 4 else x


@keras.saving.register_keras_serializable(package="gscnn_tf")
class BalancedEdgeBCE(DictLoss):
    """Class-balanced BCE on edge probabilities.

    ``call(y_true, y_pred)``: ``y_true["label"]`` (B, H, W) int (for the ignore mask),
    ``y_true["boundary"]`` (B, H, W) float {0, 1}, ``y_pred["edge"]`` (B, H, W, 1) or
    (B, H, W) probability -> scalar. 0 when no pixel is valid. When ``y_pred`` also holds
    ``edge_logits`` (the model's pre-sigmoid edge, same shape), the BCE is computed from
    them: the same value, a gradient that survives float32 sigmoid saturation.

    Args:
        epsilon: probabilities are clipped to [epsilon, 1 - epsilon] so log() is finite
            (1 - 1e-7 is representable in float32).
    """

    def __init__(self, ignore_label: int = IGNORE_LABEL, epsilon: float = 1e-7, name="edge_bce", **kwargs):
        super().__init__(ignore_label=ignore_label, name=name, **kwargs)
        self.epsilon = float(epsilon)

    def call(self, y_true, y_pred):
        _, valid = labels_of(y_true, self.ignore_label)
        boundary = ops.cast(ops.greater(y_true["boundary"], 0.5), "float32") * valid
        n_valid = global_sum(ops.sum(valid))
        n_pos = global_sum(ops.sum(boundary))
        n_neg = n_valid - n_pos
        w_pos = ops.divide_no_nan(n_neg, n_valid)
        w_neg = ops.divide_no_nan(n_pos, n_valid)
        negative = valid - boundary

        if "edge_logits" in y_pred:
            # -log(sigmoid(z)) = softplus(-z), -log(1 - sigmoid(z)) = softplus(z): the same BCE
            # as on the probabilities, with gradient w * (p - y) even where sigmoid(z) rounds
            # to exactly 1.0 in float32 (z > ~16.6) — there a clipped-probability BCE has zero
            # gradient and a shape stream that overshoots early in training never recovers.
            z = _squeeze_channel(ops.cast(y_pred["edge_logits"], "float32"))
            per_pixel = w_pos * boundary * ops.softplus(-z) + w_neg * negative * ops.softplus(z)
            return ops.divide_no_nan(ops.sum(per_pixel), n_valid)

        edge = _squeeze_channel(ops.cast(y_pred["edge"], "float32"))
        edge = ops.clip(edge, self.epsilon, 1.0 - self.epsilon)
        per_pixel = -(w_pos * boundary * ops.log(edge) + w_neg * negative * ops.log(1.0 - edge))
        return ops.divide_no_nan(ops.sum(per_pixel), n_valid)

    def get_config(self):
        config = super().get_config()
        config.update(epsilon=self.epsilon)
        return config
