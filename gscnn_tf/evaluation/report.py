"""The evaluation report: the metrics dict, its Markdown summary, and writing both."""
from __future__ import annotations

import json
import math
import os
from typing import Optional, Sequence

import numpy as np

from gscnn_tf.metrics.confusion import summarize
from gscnn_tf.utils.atomic import atomic_write_text

METRICS_JSON = "metrics.json"
METRICS_MD = "metrics.md"


def metrics_report(num_images: int, num_classes: int, scales: Sequence[float], flip: bool, confusion: np.ndarray,
                   boundary, distance=None, class_names: Optional[Sequence[str]] = None,
                   categories: Optional[Sequence[str]] = None) -> dict:
    """The JSON-serialisable report of one evaluation from its accumulated metrics.

    ``confusion``: (K, K) int64 confusion matrix; ``boundary``: a filled
    :class:`gscnn_tf.metrics.boundary_f.BoundaryFScore`; ``distance``: a filled
    :class:`gscnn_tf.metrics.distance.DistanceIoU` or None; ``class_names`` / ``categories``
    as in :func:`gscnn_tf.metrics.confusion.summarize`.
    """
    report = {
        "num_images": int(num_images),
        "num_classes": num_classes,
        "scales": list(scales),
        "flip": bool(flip),
    }
    summary = summarize(confusion, class_names, categories)
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
    report["confusion_matrix"] = confusion.tolist()
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
