"""Confusion-matrix metrics: IoU, mIoU, category mIoU, pixel and mean class accuracy.

Conventions (Cityscapes' official ``evalPixelLevelSemanticLabeling``):

* ``confusion[g, p]`` counts pixels with ground-truth train id ``g`` predicted as ``p``.
  Pixels whose ground truth is ``ignore_label`` (255) -- or any value outside
  ``0..num_classes-1`` -- are not counted. Predictions are always in range.
* ``IoU_c = TP / (TP + FP + FN)``. A class with ``TP + FP + FN == 0`` (absent from both
  the ground truth and the prediction) has IoU NaN and is **excluded** from the mean:
  ``mIoU = nanmean(IoU)``. A class that is predicted but absent from the ground truth
  counts with IoU 0.
* Category IoU: the 19x19 matrix is collapsed to 7x7 with
  :data:`gscnn_tf.data.labels.CLASS_TO_CATEGORY` (confusions between classes of the same
  category become true positives), then IoU as above. This equals Cityscapes'
  ``getIouScoreForCategory`` on train ids.
* Pixel accuracy = ``trace / total``; mean class accuracy = ``nanmean(TP / GT count)``
  over classes present in the ground truth.

:class:`StreamingMeanIoU` is the in-graph, distribution-safe equivalent used as
``val_miou`` during ``model.fit``.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import keras
import numpy as np
from keras import ops

from gscnn_tf.data import labels as _labels
from gscnn_tf.data.labels import IGNORE_LABEL

# ----------------------------------------------------------------------------- NumPy


def confusion_matrix(
    gt: np.ndarray, pred: np.ndarray, num_classes: int = 19, ignore_label: int = IGNORE_LABEL
) -> np.ndarray:
    """``(num_classes, num_classes)`` int64 matrix, rows = ground truth, columns = prediction.

    ``gt`` and ``pred`` are integer arrays of the same shape. Ground-truth pixels equal to
    ``ignore_label`` or outside ``[0, num_classes)`` are skipped; a prediction outside
    that range is an error (it would silently bias the scores).
    """
    gt = np.asarray(gt)
    pred = np.asarray(pred)
    if gt.shape != pred.shape:
        raise ValueError(f"ground truth {gt.shape} and prediction {pred.shape} differ in shape")
    gt = gt.reshape(-1).astype(np.int64)
    pred = pred.reshape(-1).astype(np.int64)
    valid = (gt >= 0) & (gt < num_classes) & (gt != ignore_label)
    gt = gt[valid]
    pred = pred[valid]
    if pred.size and (pred.min() < 0 or pred.max() >= num_classes):
        outside = np.unique(pred[(pred < 0) | (pred >= num_classes)])[:5]
        raise ValueError(f"prediction holds values outside [0, {num_classes}): {outside}")
    counts = np.bincount(gt * num_classes + pred, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes).astype(np.int64)


def iou_per_class(confusion: np.ndarray) -> np.ndarray:
    """IoU of every class; NaN where the class is in neither ground truth nor prediction."""
    cm = np.asarray(confusion, dtype=np.float64)
    tp = np.diag(cm)
    denom = cm.sum(axis=0) + cm.sum(axis=1) - tp
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denom > 0, tp / np.where(denom > 0, denom, 1.0), np.nan)


def _nanmean(values: np.ndarray) -> float:
    values = np.asarray(values, dtype=np.float64)
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else float("nan")


def mean_iou(confusion: np.ndarray) -> float:
    """Mean IoU over classes present in the ground truth or the prediction (NaN if none)."""
    return _nanmean(iou_per_class(confusion))


def category_confusion(confusion: np.ndarray, class_to_category: Optional[np.ndarray] = None) -> np.ndarray:
    """Collapses a class confusion matrix to categories (default: the 7 Cityscapes ones)."""
    cm = np.asarray(confusion)
    mapping = np.asarray(_labels.CLASS_TO_CATEGORY if class_to_category is None else class_to_category)
    if mapping.shape[0] != cm.shape[0]:
        raise ValueError(f"class_to_category has {mapping.shape[0]} entries for {cm.shape[0]} classes")
    n = int(mapping.max()) + 1
    onehot = np.zeros((cm.shape[0], n), dtype=cm.dtype)
    onehot[np.arange(cm.shape[0]), mapping] = 1
    return onehot.T @ cm @ onehot


def category_iou(confusion: np.ndarray, class_to_category: Optional[np.ndarray] = None) -> np.ndarray:
    return iou_per_class(category_confusion(confusion, class_to_category))


def category_mean_iou(confusion: np.ndarray, class_to_category: Optional[np.ndarray] = None) -> float:
    return _nanmean(category_iou(confusion, class_to_category))


def pixel_accuracy(confusion: np.ndarray) -> float:
    cm = np.asarray(confusion, dtype=np.float64)
    total = cm.sum()
    return float(np.trace(cm) / total) if total > 0 else float("nan")


def class_accuracy(confusion: np.ndarray) -> np.ndarray:
    """Per-class recall ``TP / GT count``; NaN for classes absent from the ground truth."""
    cm = np.asarray(confusion, dtype=np.float64)
    gt = cm.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(gt > 0, np.diag(cm) / np.where(gt > 0, gt, 1.0), np.nan)


def mean_class_accuracy(confusion: np.ndarray) -> float:
    return _nanmean(class_accuracy(confusion))


def _clean(value: float) -> Optional[float]:
    """NaN -> None, so reports are valid JSON."""
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def summarize(confusion: np.ndarray, class_names: Optional[tuple] = None,
              categories: Optional[Sequence[str]] = None) -> dict:
    """All confusion-based metrics as a JSON-serialisable dict (NaN written as ``None``).

    ``confusion``: (K, K). ``class_names``: K names; ``categories``: each class's category
    name (K; empty: no category mIoU). Both None: Cityscapes' when K = 19, else
    ``class_{i}`` and no categories.
    """
    cm = np.asarray(confusion)
    k = cm.shape[0]
    if class_names is None and categories is None and k == len(_labels.CLASS_NAMES):
        class_names, categories = _labels.CLASS_NAMES, _labels.CLASS_CATEGORIES
    names = tuple(class_names) if class_names is not None else tuple(f"class_{i}" for i in range(k))
    if len(names) != k:
        raise ValueError(f"{len(names)} class names for a {k}-class confusion matrix")
    ious = iou_per_class(cm)
    acc = class_accuracy(cm)
    out = {
        "miou": _clean(mean_iou(cm)),
        "pixel_accuracy": _clean(pixel_accuracy(cm)),
        "mean_class_accuracy": _clean(mean_class_accuracy(cm)),
        "iou_per_class": {n: _clean(v) for n, v in zip(names, ious)},
        "accuracy_per_class": {n: _clean(v) for n, v in zip(names, acc)},
        "num_pixels": int(cm.sum()),
    }
    if categories:
        category_names = tuple(dict.fromkeys(categories))  # first-seen order
        cat = category_iou(cm, np.array([category_names.index(c) for c in categories], dtype=np.int32))
        out["category_miou"] = _clean(_nanmean(cat))
        out["iou_per_category"] = {n: _clean(v) for n, v in zip(category_names, cat)}
    return out


# ----------------------------------------------------------------------------- Keras


@keras.saving.register_keras_serializable(package="gscnn_tf")
class StreamingMeanIoU(keras.metrics.Metric):
    """Mean IoU accumulated over batches (``val_miou`` during training).

    ``update_state(y_true, y_pred)``: ``y_true`` is the label map (B, H, W) (or
    (B, H, W, 1)) of train ids with ``ignore_label`` for unlabeled pixels, or the targets
    dict holding it under ``"label"``; ``y_pred`` is the logits (or probabilities)
    (B, H, W, K), or the model's output dict holding them under ``"seg_logits"``. The
    spatial sizes must match. ``sample_weight`` is not supported (ignored pixels are
    expressed through the label).

    The confusion matrix is a non-trainable float64 variable (exact integer counts up to
    2**53) with ``aggregation="sum"`` and on-read synchronisation, so under a
    ``tf.distribute`` strategy each replica accumulates its own shard and ``result()``
    sums them. Written in ``keras.ops``: on other backends the counts are float32, exact
    up to 2**24 per cell, enough for the training logs. ``result()`` =
    mean IoU over classes present in the ground truth or the prediction (0 before any
    update).
    """

    def __init__(self, num_classes: int = 19, ignore_label: int = IGNORE_LABEL, name: str = "miou", dtype=None, **kwargs):
        super().__init__(name=name, dtype=dtype or "float32", **kwargs)
        self.num_classes = int(num_classes)
        self.ignore_label = int(ignore_label)
        self.total_confusion = self.add_variable(
            shape=(self.num_classes, self.num_classes),
            initializer="zeros",
            # float64 (exact counts) where the backend has it by default: JAX without
            # jax_enable_x64 would truncate it to float32 with a warning on every call.
            dtype="float64" if keras.backend.backend() == "tensorflow" else "float32",
            aggregation="sum",
            name="total_confusion",
        )

    def update_state(self, y_true, y_pred, sample_weight=None):
        if isinstance(y_true, dict):
            y_true = y_true["label"]
        if isinstance(y_pred, dict):
            y_pred = y_pred["seg_logits"]
        k = self.num_classes
        labels = ops.cast(y_true, "int32")
        if len(labels.shape) == 4:
            labels = ops.squeeze(labels, axis=-1)
        pred = ops.cast(ops.argmax(y_pred, axis=-1), "int32")
        labels = ops.reshape(labels, (-1,))
        pred = ops.reshape(pred, (-1,))
        valid = (labels >= 0) & (labels < k) & ops.not_equal(labels, self.ignore_label)
        index = ops.where(valid, labels * k + pred, k * k)
        # int32 counts per batch are exact; segment k*k collects the ignored pixels.
        counts = ops.segment_sum(ops.ones_like(index), index, num_segments=k * k + 1)[: k * k]
        self.total_confusion.assign_add(ops.reshape(ops.cast(counts, self.total_confusion.dtype), (k, k)))

    def result(self):
        cm = ops.convert_to_tensor(self.total_confusion)
        tp = ops.diagonal(cm)
        denom = ops.sum(cm, axis=0) + ops.sum(cm, axis=1) - tp
        present = denom > 0
        iou = ops.where(present, tp / ops.where(present, denom, ops.ones_like(denom)), ops.zeros_like(denom))
        n = ops.sum(ops.cast(present, cm.dtype))
        return ops.cast(ops.divide_no_nan(ops.sum(iou), n), self.dtype)

    def reset_state(self):
        self.total_confusion.assign(ops.zeros((self.num_classes, self.num_classes), self.total_confusion.dtype))

    def confusion(self) -> np.ndarray:
        """The accumulated confusion matrix as int64 NumPy (summed over replicas)."""
        return np.asarray(keras.ops.convert_to_numpy(self.total_confusion)).round().astype(np.int64)

    def get_config(self):
        config = super().get_config()
        config.update({"num_classes": self.num_classes, "ignore_label": self.ignore_label})
        return config
