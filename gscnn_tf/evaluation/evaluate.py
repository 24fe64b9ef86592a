"""Model evaluation with the paper's metrics (docs/PAPER.md section 5).

``evaluate(model, dataset, eval_config)`` runs inference image by image and accumulates

* the class confusion matrix -> IoU per class, mIoU, category mIoU, pixel accuracy,
  mean class accuracy (:mod:`gscnn_tf.metrics.confusion`);
* the boundary F-score at every tolerance (:mod:`gscnn_tf.metrics.boundary_f`);
* the distance-based mIoU per crop fraction (:mod:`gscnn_tf.metrics.distance`);
* optionally, label-id PNGs and Cityscapes' official ``evaluateImgLists``.

Inference: :class:`gscnn_tf.evaluation.inference.MultiScalePredictor` (``eval_config.scales`` and
``eval_config.flip``), or with ``eval_config.tile_size`` the sliding-window
:class:`gscnn_tf.evaluation.tiled.TiledPredictor` (same protocol, one tile at a time); the report
dict and its JSON/Markdown files: :mod:`gscnn_tf.evaluation.report`.

The dataset yields ``(image (1,H,W,3), targets)`` or ``(image, targets, filename)``
(``gscnn_tf.data.pipeline.build_eval_dataset``), ``targets`` being ``{"label": (1,H,W)}``
(extra keys ignored) or the label tensor itself.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import io
import logging
import math
import os
import sys
import time
from typing import Optional, Sequence

import numpy as np
import tensorflow as tf
from tqdm import tqdm

from gscnn_tf.config import DatasetConfig, EvalConfig
from gscnn_tf.data import labels as _labels
from gscnn_tf.evaluation.report import metrics_report
from gscnn_tf.evaluation.tiled import make_predictor
from gscnn_tf.metrics.boundary_f import BoundaryFScore
from gscnn_tf.metrics.confusion import confusion_matrix
from gscnn_tf.metrics.distance import DistanceIoU, crop
from gscnn_tf.prediction.visualize import write_png

logger = logging.getLogger(__name__)


class OfficialEvalError(RuntimeError):
    """cityscapesscripts' evaluation failed (it calls sys.exit with a printed message)."""


def _unpack(element):
    if not isinstance(element, (tuple, list)) or len(element) not in (2, 3):
        raise ValueError("evaluation dataset must yield (image, targets) or (image, targets, filename)")
    image, targets = element[0], element[1]
    filename = element[2] if len(element) == 3 else None
    label = targets["label"] if isinstance(targets, dict) else targets
    image = tf.convert_to_tensor(image)
    label = np.asarray(label)
    if image.shape.rank != 4 or image.shape[0] != 1:
        raise ValueError(f"evaluation images must be batches of 1 (1, H, W, 3), got {tuple(image.shape)}")
    if label.ndim == 4:
        label = label[..., 0]
    if label.ndim == 3:
        label = label[0]
    if label.shape != tuple(image.shape[1:3]):
        raise ValueError(f"label {label.shape} and image {tuple(image.shape[1:3])} sizes differ")
    if filename is not None:
        filename = np.asarray(filename).reshape(-1)[0]
        filename = filename.decode("utf-8") if isinstance(filename, bytes) else str(filename)
    return image, label.astype(np.int64), filename


def _stem(filename: Optional[str], index: int) -> str:
    if not filename:
        return f"image_{index:05d}"
    stem = os.path.splitext(os.path.basename(filename))[0]
    for suffix in ("_leftImg8bit", "_gtFine_labelIds"):
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
    return stem or f"image_{index:05d}"


def run_official_evaluation(pred_paths: list, gt_paths: list) -> dict:
    """Cityscapes' ``evaluateImgLists`` on label-id PNGs; returns IoU summary.

    Its errors (``printError`` -> ``sys.exit``) become :class:`OfficialEvalError` with the
    printed message. Instance-level scores (nIoU) are not computed (they need the
    ``*_instanceIds.png`` files).
    """
    import copy

    from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as cs_eval

    args = copy.copy(cs_eval.args)
    args.evalInstLevelScore = False
    args.evalPixelAccuracy = False
    args.JSONOutput = False
    args.quiet = True
    args.colorized = False
    args.bold = ""
    args.nocol = ""
    captured = io.StringIO()
    try:
        with contextlib.redirect_stdout(captured):
            result = cs_eval.evaluateImgLists(pred_paths, gt_paths, args)
    except SystemExit as exc:
        lines = [l for l in captured.getvalue().splitlines() if l.strip()]
        message = next((l for l in reversed(lines) if l.startswith("ERROR")), lines[-1] if lines else f"exit {exc.code}")
        raise OfficialEvalError(f"cityscapesscripts evaluation failed: {message}") from None

    def avg(scores: dict) -> Optional[float]:
        values = [v for v in scores.values() if isinstance(v, float) and not math.isnan(v)]
        return float(np.mean(values)) if values else None

    class_scores = {k: (None if math.isnan(v) else float(v)) for k, v in result["classScores"].items()}
    category_scores = {k: (None if math.isnan(v) else float(v)) for k, v in result["categoryScores"].items()}
    return {
        "miou": avg(result["classScores"]),
        "category_miou": avg(result["categoryScores"]),
        "iou_per_class": class_scores,
        "iou_per_category": category_scores,
    }


def evaluate(
    model,
    dataset,
    eval_config: Optional[EvalConfig] = None,
    num_classes: int = 19,
    *,
    dataset_config: Optional[DatasetConfig] = None,
    max_images: Optional[int] = None,
    distance_mode: Optional[str] = "resize",
    vanishing_point: Optional[Sequence[float]] = None,
    output_dir: Optional[str] = None,
    save_predictions: bool = False,
    progress: Optional[bool] = None,
    boundary_workers: int = 2,
) -> dict:
    """Evaluates ``model`` on ``dataset``; returns a JSON-serialisable report dict.

    ``distance_mode``: "resize" (paper), "crop" (cheap) or None (skip the distance
    evaluation); see :mod:`gscnn_tf.metrics.distance`. ``dataset_config``: the class names,
    categories, ignore label and source label values (None: Cityscapes, names only when
    ``num_classes`` is 19). ``save_predictions`` writes the dataset's source-id PNGs (inverse
    of ``dataset_config.label_map``) to ``output_dir/predictions``; ``eval_config.official_eval``
    also writes the ground truth as label-id PNGs (ignore -> 0 "unlabeled") to ``output_dir/gt_labelIds``
    and runs Cityscapes' ``evaluateImgLists`` on them (needs ``output_dir``; 19 classes).
    ``progress``: tqdm bar (default: when stderr is a TTY). ``boundary_workers``: threads
    computing the boundary F-score (NumPy/SciPy, CPU) concurrently with inference.
    """
    cfg = eval_config or EvalConfig()
    official = bool(cfg.official_eval)
    if (official or save_predictions) and not output_dir:
        raise ValueError("official_eval / save_predictions need an output_dir")
    if official and num_classes != _labels.NUM_CLASSES:
        raise ValueError("official Cityscapes evaluation needs the 19 Cityscapes train classes")
    described = dataset_config is not None
    dataset_config = dataset_config or DatasetConfig()
    if described and len(dataset_config.class_names) != num_classes:
        raise ValueError(f"the dataset has {len(dataset_config.class_names)} classes, the model {num_classes}")
    ignore_label = dataset_config.ignore_label
    predictor = make_predictor(model, cfg)
    boundary = BoundaryFScore(num_classes, cfg.boundary_tolerances_px, cfg.boundary_reference_size, ignore_label)
    distance = None
    if distance_mode:
        distance = DistanceIoU(cfg.distance_crop_fractions, num_classes, vanishing_point, distance_mode, ignore_label)
    total = np.zeros((num_classes, num_classes), np.int64)
    lut = dataset_config.source_id_lut()
    pred_paths, gt_paths = [], []
    if progress is None:
        progress = sys.stderr.isatty()
    start = time.time()
    n = 0
    bar = tqdm(total=max_images, desc="evaluate", unit="img", disable=not progress)
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=max(1, int(boundary_workers)))
    pending: list = []
    try:
        for element in dataset:
            if max_images is not None and n >= max_images:
                break
            image, label, filename = _unpack(element)
            height, width = label.shape
            pred = predictor.labels(image)
            total += confusion_matrix(label, pred, num_classes, ignore_label)
            # Boundary F (CPU) runs in worker threads while the accelerator infers the next images.
            pending.append(pool.submit(boundary.compute, pred, label))
            while len(pending) > 2 * boundary_workers:
                boundary.add(*pending.pop(0).result())
            if distance is not None:
                for fraction in distance.fractions:
                    box = distance.box((height, width), fraction)
                    if distance.mode == "crop" or box == (0, 0, height, width):
                        pred_crop = crop(pred, box)
                    else:
                        top, left, h, w = box
                        region = image[:, top : top + h, left : left + w, :]
                        region = tf.image.resize(region, (height, width), method="bilinear")
                        pred_crop = predictor.labels(region, (h, w))
                    distance.update(fraction, pred_crop, crop(label, box))
            if save_predictions or official:
                stem = _stem(filename, n)
                pred_dir = os.path.join(output_dir, "predictions")
                os.makedirs(pred_dir, exist_ok=True)
                pred_path = os.path.join(pred_dir, f"{stem}_labelIds.png")
                write_png(pred_path, lut[pred.astype(np.uint8)])
                pred_paths.append(pred_path)
                if official:
                    gt_dir = os.path.join(output_dir, "gt_labelIds")
                    os.makedirs(gt_dir, exist_ok=True)
                    gt_path = os.path.join(gt_dir, f"{stem}_gtFine_labelIds.png")
                    gt_label = np.where((label >= 0) & (label < num_classes), label, ignore_label).astype(np.uint8)
                    write_png(gt_path, lut[gt_label])
                    gt_paths.append(gt_path)
            n += 1
            bar.update(1)
        for future in pending:
            boundary.add(*future.result())
    finally:
        bar.close()
        pool.shutdown(wait=True, cancel_futures=True)
    if n == 0:
        raise ValueError("evaluation dataset is empty")
    seconds = time.time() - start

    names, categories = (dataset_config.class_names, dataset_config.categories) if described else (None, None)
    report = metrics_report(n, num_classes, predictor.scales, predictor.flip, total, boundary, distance,
                            names, categories)
    if official:
        try:
            report["official"] = run_official_evaluation(pred_paths, gt_paths)
        except OfficialEvalError as exc:
            logger.error("%s", exc)
            report["official"] = {"error": str(exc)}
    report["tile_size"] = list(cfg.tile_size) if cfg.tile_size else None
    if cfg.tile_size:
        report["tile_overlap"] = int(cfg.tile_overlap)
    report["seconds"] = seconds
    report["seconds_per_image"] = seconds / n
    logger.info("evaluated %d images in %.1f s: mIoU %.4f", n, seconds, report["miou"] or float("nan"))
    return report
