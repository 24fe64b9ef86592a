"""Segmentation cross-entropy with an ignore label, and the plumbing all loss terms share.

Shared conventions (docs/ARCHITECTURE.md "Targets" and "Losses"):

* ``y_true`` is the targets dict: ``label`` (B, H, W) int train ids (255 = ignore) and
  ``boundary`` (B, H, W) float {0, 1}; ``y_pred`` is the model's output dict:
  ``seg_logits`` (B, H, W, K) and ``edge`` (B, H, W, 1) probability.
* Every term is computed in float32 (inputs may be float16 under mixed precision) and
  labels stay exact integers, which is why :class:`DictLoss` replaces Keras'
  ``Loss.__call__`` (that one casts *every* input to the loss dtype).
* Distribution: every term is ``local_sum / GLOBAL_count``. The count is all-reduced
  across replicas (:func:`global_sum`), so the per-replica values are *shares* that add
  up to the single-device loss of the global batch, and so do their gradients (Keras
  sums replica gradients). See ``combined.py`` for the full convention.
"""
from __future__ import annotations

import keras
from keras import ops

from gscnn_tf.data.labels import IGNORE_LABEL


def _on_tensorflow() -> bool:
    return keras.backend.backend() == "tensorflow"


def global_sum(x):
    """Sum of ``x`` over all replicas when called in a replica context with >1 replicas.

    Only ever applied to pixel counts (no gradient needed), so the all-reduce stays out
    of the backward pass.
    """
    x = ops.stop_gradient(x)
    if not _on_tensorflow():  # tf.distribute is the only replica context there is
        return x
    import tensorflow as tf

    ctx = tf.distribute.get_replica_context()
    if ctx is not None and ctx.num_replicas_in_sync > 1:
        return ctx.all_reduce(tf.distribute.ReduceOp.SUM, x)
    return x


def labels_of(y_true, ignore_label: int = IGNORE_LABEL):
    """(label int32 (B,H,W), valid float32 (B,H,W)) from the targets dict."""
    label = y_true["label"]
    if label.dtype != "int32":
        label = ops.cast(label, "int32")  # exact for float inputs holding 0..255
    valid = ops.cast(ops.not_equal(label, ignore_label), "float32")
    return label, valid


def pixel_cross_entropy(label, logits, ignore_label: int = IGNORE_LABEL):
    """Per-pixel softmax cross-entropy, 0 at ignore pixels.

    Args:
        label: (B, H, W) int32 train ids, ``ignore_label`` = unlabelled.
        logits: (B, H, W, K) float32.

    Returns:
        (ce, valid): both (B, H, W) float32; ``valid`` is 1 where ``label != ignore``.
    """
    valid = ops.not_equal(label, ignore_label)
    # Ignore pixels get class 0 so the op sees an in-range id; their CE is masked below.
    safe = ops.where(valid, label, ops.zeros_like(label))
    ce = ops.sparse_categorical_crossentropy(safe, logits, from_logits=True, axis=-1)
    valid = ops.cast(valid, "float32")
    return ce * valid, valid


def _to_tensor(x):
    if _on_tensorflow():
        import tensorflow as tf

        return tf.convert_to_tensor(x)  # also reads tf.Variables (keras.ops would pass them through)
    return ops.convert_to_tensor(x)


def _to_float32(x):
    x = _to_tensor(x)
    return x if keras.backend.standardize_dtype(x.dtype) == "float32" else ops.cast(x, "float32")


class DictLoss(keras.losses.Loss):
    """Base class of the Gated-SCNN loss terms: dict inputs, scalar output.

    ``__call__`` keeps ``label`` an integer tensor, casts every float to float32, and
    returns ``call``'s scalar unchanged (no Keras reduction, no replica scaling).
    """

    def __init__(self, ignore_label: int = IGNORE_LABEL, name=None, reduction="sum_over_batch_size", dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.ignore_label = int(ignore_label)

    def __call__(self, y_true, y_pred, sample_weight=None):
        if sample_weight is not None:
            raise ValueError(f"{self.name}: sample_weight is not supported (mask with the ignore label)")
        y_true, y_pred = self._standardize(y_true, y_pred)
        with keras.name_scope(self.name):
            return self.call(y_true, y_pred)

    @staticmethod
    def _standardize(y_true, y_pred):
        y_true = dict(y_true)
        y_true["label"] = _to_tensor(y_true["label"])
        if "boundary" in y_true:
            y_true["boundary"] = _to_float32(y_true["boundary"])
        y_pred = {k: _to_float32(v) for k, v in dict(y_pred).items()}
        return y_true, y_pred

    def get_config(self):
        config = super().get_config()
        config.update(ignore_label=self.ignore_label)
        return config


@keras.saving.register_keras_serializable(package="gscnn_tf")
class SegmentationCrossEntropy(DictLoss):
    """Softmax cross-entropy of ``seg_logits`` against ``label``, mean over valid pixels.

    ``call(y_true, y_pred)``: ``y_true["label"]`` (B, H, W) int, ``y_pred["seg_logits"]``
    (B, H, W, K) -> scalar ``sum_valid CE / N_valid`` (N_valid global across replicas;
    0 when no pixel is valid).
    """

    def __init__(self, ignore_label: int = IGNORE_LABEL, name="seg_ce", **kwargs):
        super().__init__(ignore_label=ignore_label, name=name, **kwargs)

    def call(self, y_true, y_pred):
        label, _ = labels_of(y_true, self.ignore_label)
        return self.reduce(*pixel_cross_entropy(label, _to_float32(y_pred["seg_logits"]), self.ignore_label))

    @staticmethod
    def reduce(ce, valid):
        """The term from :func:`pixel_cross_entropy`'s ``(ce, valid)`` (shared with the attention term)."""
        return ops.divide_no_nan(ops.sum(ce), global_sum(ops.sum(valid)))
