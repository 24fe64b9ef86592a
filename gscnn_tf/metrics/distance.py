"""Distance-based evaluation (paper section 4, "distance-based evaluation"; not in the official code).

Distant objects are small and sit near the vanishing point; IoU over crops centred
there, of decreasing size, weighs them more. Our protocol, per image of size H x W:

* **Vanishing point** ``(vx, vy)`` as fractions of (width, height); default
  ``(0.5, 0.45)``: horizontally centred, at 45 % of the height (the Cityscapes horizon,
  with the camera's fixed mounting). A per-dataset point may be passed.
* **Crop** for fraction ``f`` (``EvalConfig.distance_crop_fractions``, default 1.0,
  0.75, 0.5, 0.25): ``h = max(1, floor(f*H + 0.5))``, ``w = max(1, floor(f*W + 0.5))``
  (same aspect ratio as the image), ``top = floor(vy*H - h/2 + 0.5)``, ``left =
  floor(vx*W - w/2 + 0.5)``, each then clamped so the crop lies inside the image
  (``0 <= top <= H - h``). ``f = 1`` is the full image.
* **Inference** (``mode``):
  - ``"resize"`` (default; the paper's protocol): the crop of the input image is resized
    bilinearly to the full H x W, the model (with the configured scales/flip) runs on
    it, the averaged class probabilities are resized bilinearly back to h x w and
    arg-maxed, and compared with the *native* ground-truth crop (the ground truth is
    never interpolated). Costs one extra inference per fraction < 1.
  - ``"crop"`` (cheap): the full-image prediction is cropped; no extra inference. This
    measures the same regions but at the native resolution of distant objects.
* **Score**: one confusion matrix per fraction, accumulated over all images; mIoU as in
  :mod:`gscnn_tf.metrics.confusion` (classes absent from both GT and prediction of
  that crop set are excluded).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np

from gscnn_tf.data.labels import IGNORE_LABEL
from gscnn_tf.metrics.confusion import confusion_matrix, summarize

DEFAULT_VANISHING_POINT = (0.5, 0.45)
MODES = ("resize", "crop")


def _round(x: float) -> int:
    return int(math.floor(x + 0.5))


def crop_box(
    image_size: Sequence[int], fraction: float, vanishing_point: Optional[Sequence[float]] = None
) -> tuple:
    """``(top, left, height, width)`` of the crop for ``fraction`` (see the module docstring)."""
    height, width = int(image_size[0]), int(image_size[1])
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"crop fraction must be in (0, 1], got {fraction}")
    vx, vy = DEFAULT_VANISHING_POINT if vanishing_point is None else vanishing_point
    if not (0.0 <= vx <= 1.0 and 0.0 <= vy <= 1.0):
        raise ValueError(f"vanishing point must be fractions of (width, height) in [0, 1], got {vanishing_point}")
    h = max(1, _round(fraction * height))
    w = max(1, _round(fraction * width))
    top = min(max(_round(vy * height - h / 2.0), 0), height - h)
    left = min(max(_round(vx * width - w / 2.0), 0), width - w)
    return top, left, h, w


def crop(array: np.ndarray, box: tuple) -> np.ndarray:
    """Crops the first two (spatial) axes of ``array``; ``box`` from :func:`crop_box`."""
    top, left, h, w = box
    return array[top : top + h, left : left + w]


class DistanceIoU:
    """One confusion matrix per crop fraction; ``update(fraction, pred_crop, gt_crop)``."""

    def __init__(
        self,
        fractions: Sequence[float] = (1.0, 0.75, 0.5, 0.25),
        num_classes: int = 19,
        vanishing_point: Optional[Sequence[float]] = None,
        mode: str = "resize",
        ignore_label: int = IGNORE_LABEL,
    ):
        if mode not in MODES:
            raise ValueError(f"distance mode must be one of {MODES}, got {mode!r}")
        self.fractions = [float(f) for f in fractions]
        for f in self.fractions:
            crop_box((10, 10), f)  # validates the fraction
        self.num_classes = int(num_classes)
        self.vanishing_point = tuple(vanishing_point) if vanishing_point is not None else DEFAULT_VANISHING_POINT
        self.mode = mode
        self.ignore_label = ignore_label
        self.confusions = {f: np.zeros((num_classes, num_classes), np.int64) for f in self.fractions}

    def box(self, image_size: Sequence[int], fraction: float) -> tuple:
        return crop_box(image_size, fraction, self.vanishing_point)

    def update(self, fraction: float, pred_crop: np.ndarray, gt_crop: np.ndarray) -> None:
        self.confusions[float(fraction)] += confusion_matrix(gt_crop, pred_crop, self.num_classes, self.ignore_label)

    def result(self) -> dict:
        """JSON-serialisable: protocol settings and, per fraction, the confusion summary."""
        per = {}
        for f in self.fractions:
            s = summarize(self.confusions[f])
            per[f"{f:g}"] = {"miou": s["miou"], "iou_per_class": s["iou_per_class"], "num_pixels": s["num_pixels"]}
        return {"mode": self.mode, "vanishing_point": list(self.vanishing_point), "fractions": per}
