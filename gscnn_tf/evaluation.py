"""Model evaluation with the paper's metrics (docs/PAPER.md section 5).

``evaluate(model, dataset, eval_config)`` runs inference image by image and accumulates

* the class confusion matrix -> IoU per class, mIoU, category mIoU, pixel accuracy,
  mean class accuracy (:mod:`gscnn_tf.metrics.confusion`);
* the boundary F-score at every tolerance (:mod:`gscnn_tf.metrics.boundary_f`);
* the distance-based mIoU per crop fraction (:mod:`gscnn_tf.metrics.distance`);
* optionally, label-id PNGs and Cityscapes' official ``evaluateImgLists``.

Inference (``Predictor``): for every scale ``s`` in ``eval_config.scales`` the image is
resized bilinearly to ``(round(H*s/8)*8, round(W*s/8)*8)`` (at least 8; no resize when
that equals the input size), the model's ``seg_logits`` are resized bilinearly back to
H x W and turned into softmax probabilities; with ``eval_config.flip`` the horizontally
flipped image is also run and its probabilities flipped back. The prediction is the
arg-max of the mean of all these probability maps.

The dataset yields ``(image (1,H,W,3), targets)`` or ``(image, targets, filename)``
(``gscnn_tf.data.pipeline.build_eval_dataset``), ``targets`` being ``{"label": (1,H,W)}``
(extra keys ignored) or the label tensor itself.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import io
import json
import logging
import math
import os
import sys
import time
from typing import Optional, Sequence

import numpy as np
import tensorflow as tf
from tqdm import tqdm

from gscnn_tf import labels as _labels
from gscnn_tf.config import EvalConfig
from gscnn_tf.metrics.boundary_f import BoundaryFScore
from gscnn_tf.metrics.confusion import IGNORE_LABEL, confusion_matrix, summarize
from gscnn_tf.metrics.distance import DistanceIoU, crop
from gscnn_tf.utils.atomic import atomic_path, atomic_write_text

logger = logging.getLogger(__name__)

METRICS_JSON = "metrics.json"
METRICS_MD = "metrics.md"


class OfficialEvalError(RuntimeError):
    """cityscapesscripts' evaluation failed (it calls sys.exit with a printed message)."""


def scaled_size(height: int, width: int, scale: float, multiple: int = 8) -> tuple:
    """Input size for one scale: H*s and W*s rounded to the nearest multiple of 8 (>= 8)."""
    def one(x: int) -> int:
        return max(multiple, int(math.floor(x * scale / multiple + 0.5)) * multiple)

    return one(height), one(width)


def _seg_logits(outputs):
    if isinstance(outputs, dict):
        return outputs["seg_logits"]
    if isinstance(outputs, (list, tuple)):
        return outputs[0]
    return outputs


class Predictor:
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
            size = scaled_size(height, width, scale)
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


def _write_png(path: str, array: np.ndarray) -> None:
    import cv2

    with atomic_path(path, suffix=".png") as tmp:
        if not cv2.imwrite(tmp, array):
            raise OSError(f"{path}: could not write PNG")


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
    ignore_label: int = IGNORE_LABEL,
    max_images: Optional[int] = None,
    distance_mode: Optional[str] = "resize",
    vanishing_point: Optional[Sequence[float]] = None,
    output_dir: Optional[str] = None,
    save_predictions: bool = False,
    class_names: Optional[Sequence[str]] = None,
    progress: Optional[bool] = None,
    boundary_workers: int = 2,
) -> dict:
    """Evaluates ``model`` on ``dataset``; returns a JSON-serialisable report dict.

    ``distance_mode``: "resize" (paper), "crop" (cheap) or None (skip the distance
    evaluation); see :mod:`gscnn_tf.metrics.distance`. ``save_predictions`` writes
    label-id PNGs to ``output_dir/predictions``; ``eval_config.official_eval`` also writes
    the ground truth as label-id PNGs (ignore -> 0 "unlabeled") to ``output_dir/gt_labelIds``
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
    predictor = Predictor(model, cfg.scales, cfg.flip)
    boundary = BoundaryFScore(num_classes, cfg.boundary_tolerances_px, cfg.boundary_reference_size, ignore_label)
    distance = None
    if distance_mode:
        distance = DistanceIoU(cfg.distance_crop_fractions, num_classes, vanishing_point, distance_mode, ignore_label)
    total = np.zeros((num_classes, num_classes), np.int64)
    lut = _labels.train_id_to_label_id_lut()
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
                _write_png(pred_path, lut[pred.astype(np.uint8)])
                pred_paths.append(pred_path)
                if official:
                    gt_dir = os.path.join(output_dir, "gt_labelIds")
                    os.makedirs(gt_dir, exist_ok=True)
                    gt_path = os.path.join(gt_dir, f"{stem}_gtFine_labelIds.png")
                    gt_label = np.where((label >= 0) & (label < num_classes), label, 255).astype(np.uint8)
                    _write_png(gt_path, lut[gt_label])
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

    report = {
        "num_images": n,
        "num_classes": num_classes,
        "scales": predictor.scales,
        "flip": predictor.flip,
    }
    names = tuple(class_names) if class_names is not None else None
    summary = summarize(total, names)
    report.update(summary)
    names = list(summary["iou_per_class"].keys())
    f_all = boundary.per_class()
    f_present = boundary.per_class_present()
    res_all = boundary.result()
    res_present = boundary.result_present()
    report["boundary_f"] = {}
    for j, px in enumerate(boundary.tolerances_px):
        report["boundary_f"][f"{px:g}"] = {
            "f": float(res_all[j]),
            "f_present": None if math.isnan(res_present[j]) else float(res_present[j]),
            "tolerance_px_used": sorted(boundary.pixel_tolerances_used[j]),
            "f_per_class": {c: float(f_all[i, j]) for i, c in enumerate(names)},
            "f_present_per_class": {
                c: None if math.isnan(f_present[i, j]) else float(f_present[i, j]) for i, c in enumerate(names)
            },
        }
    report["boundary_reference_size"] = list(boundary.reference_size)
    if distance is not None:
        report["distance"] = distance.result()
    report["confusion_matrix"] = total.tolist()
    if official:
        try:
            report["official"] = run_official_evaluation(pred_paths, gt_paths)
        except OfficialEvalError as exc:
            logger.error("%s", exc)
            report["official"] = {"error": str(exc)}
    report["seconds"] = seconds
    report["seconds_per_image"] = seconds / n
    logger.info("evaluated %d images in %.1f s: mIoU %.4f", n, seconds, report["miou"] or float("nan"))
    return report


def _pct(value) -> str:
    return "n/a" if value is None else f"{100.0 * value:.2f}"


def markdown_report(report: dict) -> str:
    """A Markdown summary: headline metrics, boundary F, distance mIoU, per-class IoU."""
    lines = [
        "# Evaluation",
        "",
        f"{report['num_images']} images, scales {report['scales']}, flip {report['flip']}.",
        "",
        "| metric | value (%) |",
        "|---|---|",
        f"| mIoU | {_pct(report['miou'])} |",
    ]
    if "category_miou" in report:
        lines.append(f"| category mIoU | {_pct(report['category_miou'])} |")
    lines += [
        f"| pixel accuracy | {_pct(report['pixel_accuracy'])} |",
        f"| mean class accuracy | {_pct(report['mean_class_accuracy'])} |",
    ]
    ref = "x".join(str(v) for v in report.get("boundary_reference_size", []))
    for key, entry in report.get("boundary_f", {}).items():
        used = ",".join(str(v) for v in entry.get("tolerance_px_used", []))
        lines.append(f"| boundary F @ {key} px at {ref} ({used} px here) | {_pct(entry['f'])} |")
    for key, entry in report.get("boundary_f", {}).items():
        lines.append(f"| boundary F @ {key} px, images where the class has a boundary | {_pct(entry.get('f_present'))} |")
    dist = report.get("distance")
    if dist:
        for key, entry in dist["fractions"].items():
            lines.append(f"| mIoU, crop {key} ({dist['mode']}) | {_pct(entry['miou'])} |")
    if "official" in report:
        off = report["official"]
        lines.append(f"| official Cityscapes mIoU | {off.get('error') or _pct(off.get('miou'))} |")
    tolerances = list(report.get("boundary_f", {}).keys())
    lines += ["", "| class | IoU | accuracy | " + " | ".join(f"F@{t}px" for t in tolerances) + " |",
              "|---|---|---|" + "---|" * len(tolerances)]
    for name, iou in report["iou_per_class"].items():
        fs = [_pct(report["boundary_f"][t]["f_per_class"].get(name)) for t in tolerances]
        lines.append(f"| {name} | {_pct(iou)} | {_pct(report['accuracy_per_class'].get(name))} | " + " | ".join(fs) + " |")
    if "iou_per_category" in report:
        lines += ["", "| category | IoU |", "|---|---|"]
        lines += [f"| {k} | {_pct(v)} |" for k, v in report["iou_per_category"].items()]
    return "\n".join(lines) + "\n"


def write_report(report: dict, out_dir: str) -> tuple:
    """Writes ``metrics.json`` and ``metrics.md`` atomically; returns their paths."""
    os.makedirs(out_dir, exist_ok=True)
    json_path = os.path.join(out_dir, METRICS_JSON)
    md_path = os.path.join(out_dir, METRICS_MD)
    atomic_write_text(json_path, json.dumps(report, indent=2, allow_nan=False) + "\n")
    atomic_write_text(md_path, markdown_report(report))
    return json_path, md_path
