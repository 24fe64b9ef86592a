"""L_reg<- ("attention" term, paper eq. 4): segmentation CE on confident edge pixels.

    L = sum_p 1[s_p > thr] * 1[valid_p] * CE_p  /  sum_p 1[s_p > thr] * 1[valid_p]

The edge probability ``s`` only selects pixels: no gradient flows into the shape stream
through this term (the indicator has none anyway; the mask is also stop_gradient'ed so
that intent survives refactoring). The count is global across replicas; the term is 0
(finite, zero gradient) when no pixel passes the threshold.
"""
from __future__ import annotations

import keras
from keras import ops

from gscnn_tf.data.labels import IGNORE_LABEL
from gscnn_tf.losses.segmentation import DictLoss, global_sum, labels_of, pixel_cross_entropy


@keras.saving.register_keras_serializable(package="gscnn_tf")
class AttentionLoss(DictLoss):
    """Cross-entropy restricted to pixels with edge probability above ``threshold``.

    ``call(y_true, y_pred)``: ``y_true["label"]`` (B, H, W) int, ``y_pred["seg_logits"]``
    (B, H, W, K), ``y_pred["edge"]`` (B, H, W, 1) or (B, H, W) probability -> scalar.
    """

    def __init__(self, threshold: float = 0.8, ignore_label: int = IGNORE_LABEL, name="attention", **kwargs):
        super().__init__(ignore_label=ignore_label, name=name, **kwargs)
        self.threshold = float(threshold)

    def call(self, y_true, y_pred):
        label, _ = labels_of(y_true, self.ignore_label)
        ce, valid = pixel_cross_entropy(label, ops.cast(y_pred["seg_logits"], "float32"), self.ignore_label)
        return self.reduce(ce, valid, y_pred["edge"])

    def reduce(self, ce, valid, edge):
        """The term from :func:`pixel_cross_entropy`'s ``(ce, valid)`` and the edge map.

        ``GSCNNLoss`` computes the per-pixel CE once for this and the segmentation term.
        """
        edge = ops.stop_gradient(ops.cast(edge, "float32"))
        if len(edge.shape) == 4:
            edge = ops.squeeze(edge, axis=-1)
        mask = ops.cast(ops.greater(edge, self.threshold), "float32") * valid
        return ops.divide_no_nan(ops.sum(ce * mask), global_sum(ops.sum(mask)))

    def get_config(self):
        config = super().get_config()
        config.update(threshold=self.threshold)
        return config
