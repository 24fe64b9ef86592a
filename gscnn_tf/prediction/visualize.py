"""Visual outputs of a prediction: colour masks, overlays, edge maps, source label-id PNGs.

All functions take numpy arrays: ``classes`` (H, W) train ids (any id >= K, the number of
class colours, = ignore / padding), ``image`` (H, W, 3) uint8 RGB, ``edge`` (H, W) float in
[0, 1], ``colors`` (K, 3) RGB 0..255 (the dataset description's ``class_colors``; None:
Cityscapes').
"""
from __future__ import annotations

import numpy as np

from gscnn_tf.data import labels as label_tables
from gscnn_tf.utils.atomic import atomic_path


def color_mask(classes: np.ndarray, colors=None) -> np.ndarray:
    """(H, W) train ids -> (H, W, 3) uint8 RGB in ``colors``; ignore is black."""
    return label_tables.colorize(np.asarray(classes), colors)


def overlay(image: np.ndarray, classes: np.ndarray, alpha: float = 0.5, colors=None) -> np.ndarray:
    """Blends the colour mask over the photo: ``(1 - alpha) * image + alpha * colour``.

    Ignore pixels (ids >= the number of classes) show the photo unchanged.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"overlay alpha {alpha}: must be in [0, 1]")
    image = np.asarray(image, np.uint8)
    classes = np.asarray(classes)
    if image.shape[:2] != classes.shape:
        raise ValueError(f"image {image.shape[:2]} and class map {classes.shape} differ in size")
    colours = color_mask(classes, colors).astype(np.float32)
    blend = (1.0 - alpha) * image.astype(np.float32) + alpha * colours
    valid = (classes < (label_tables.NUM_CLASSES if colors is None else len(colors)))[..., None]
    out = np.where(valid, blend, image.astype(np.float32))
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def edge_image(edge: np.ndarray) -> np.ndarray:
    """(H, W) boundary probability -> (H, W) uint8 grey levels (0 = no edge, 255 = edge)."""
    return np.clip(np.round(np.asarray(edge, np.float32) * 255.0), 0, 255).astype(np.uint8)


def label_ids_image(classes: np.ndarray, source_ids=None) -> np.ndarray:
    """(H, W) train ids -> (H, W) uint8 source label ids through ``source_ids`` (a 256-entry
    table, ``DatasetConfig.source_id_lut()``; None: Cityscapes' label ids, as the official
    evaluation reads them)."""
    lut = label_tables.train_id_to_label_id_lut() if source_ids is None else np.asarray(source_ids, np.uint8)
    return lut[np.asarray(classes, np.uint8)]


def write_png(path: str, image: np.ndarray) -> None:
    """Writes an (H, W) grey or (H, W, 3) RGB uint8 image as PNG, atomically."""
    import cv2

    image = np.asarray(image, np.uint8)
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    with atomic_path(path, suffix=".png") as tmp:
        if not cv2.imwrite(tmp, image):
            raise OSError(f"{path}: could not write PNG")
