"""Prediction on image files from a SavedModel export or a training checkpoint.

Both sources go through the same serving graph (:class:`gscnn_tf.export.GSCNNServingModule`):
a SavedModel's ``serving_image_tensor`` signature, or the same module built in memory
around the checkpoint's Keras model. Images are decoded with TensorFlow's decoders (the
ones the ``serving_default`` signature uses), so the CLI and a server agree pixel for pixel.

Per input image ``<name>`` the writer produces ``<name>_seg.png`` (Cityscapes colours),
``<name>_overlay.png`` (colours blended over the photo), ``<name>_edges.png`` (shape-stream
boundary probability as grey levels) and optionally ``<name>_labelIds.png`` (Cityscapes
label ids, the official evaluation's input format). Unreadable files are skipped and
reported; the caller decides the exit status.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional

import numpy as np
import tensorflow as tf

from gscnn_tf import visualize

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
OUTPUT_SUFFIXES = ("_seg.png", "_overlay.png", "_edges.png", "_labelIds.png")


class ImageReadError(ValueError):
    """A file is missing or is not a decodable image."""


class Predictor:
    """``predictor(image)``: (H, W, 3) uint8 RGB -> {"classes": (H, W), "edge": (H, W), ...}."""

    def __init__(self, fn: Callable, source: str, kind: str):
        self._fn = fn
        self.source = source
        self.kind = kind  # "saved_model" or "checkpoint"

    def __call__(self, image: np.ndarray) -> dict:
        image = np.asarray(image)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
            raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got {image.dtype} {image.shape}")
        out = self._fn(tf.constant(image[None]))
        return {key: value.numpy()[0] for key, value in out.items()}


def load_predictor(path: str, config_path: Optional[str] = None, version: Optional[int] = None,
                   with_probabilities: bool = False) -> Predictor:
    """A SavedModel (a version dir or an export root: highest version) or any checkpoint
    :func:`gscnn_tf.checkpoints.load_inference_model` accepts."""
    from gscnn_tf.export.saved_model import (IMAGE_TENSOR_SIGNATURE, TENSOR_INPUT, build_serving_module,
                                             find_saved_model, is_saved_model_path)

    if is_saved_model_path(path) or version is not None:
        directory = find_saved_model(path, version)
        logger.info("loading SavedModel %s", directory)
        loaded = tf.saved_model.load(directory)
        signature = loaded.signatures[IMAGE_TENSOR_SIGNATURE]
        predictor = Predictor(lambda x: signature(**{TENSOR_INPUT: x}), directory, "saved_model")
        predictor._loaded = loaded  # keep the restored object (and its variables) alive
        return predictor
    from gscnn_tf.checkpoints import load_inference_model
    from gscnn_tf.config import load_config

    config = load_config(config_path) if config_path else None
    model, config = load_inference_model(path, config)
    logger.info("loaded checkpoint %s", path)
    module = build_serving_module(model, config, with_probabilities=with_probabilities)
    predictor = Predictor(module.serve_images, path, "checkpoint")
    predictor._module = module
    return predictor


def read_image(path: str) -> np.ndarray:
    """File -> (H, W, 3) uint8 RGB (grayscale and RGBA converted), TensorFlow's decoders."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise ImageReadError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    if not data:
        raise ImageReadError(f"{path}: empty file")
    try:
        image = tf.io.decode_image(data, channels=3, dtype=tf.uint8, expand_animations=False)
    except (tf.errors.InvalidArgumentError, tf.errors.UnknownError) as exc:
        raise ImageReadError(f"{path}: not a readable image ({exc.message.splitlines()[0]})") from exc
    return image.numpy()


def find_images(inputs: Iterable[str], recursive: bool = False) -> list:
    """Files and folders -> [(path, output name)]; output names keep sub-folders of a folder.

    A file given explicitly is used whatever its extension; folders contribute files with
    an image extension. Two inputs with the same name stem (``a.png``, ``a.jpg``) keep
    their extension in the output name (``a_png``, ``a_jpg``) instead of overwriting.
    """
    items = []
    for entry in inputs:
        if os.path.isdir(entry):
            found = []
            for root, dirs, files in os.walk(entry):
                dirs.sort()
                if not recursive:
                    dirs.clear()
                for name in sorted(files):
                    if name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith("."):
                        full = os.path.join(root, name)
                        found.append((full, os.path.relpath(full, entry)))
            if not found:
                logger.warning("%s: no image files (%s)", entry, ", ".join(IMAGE_EXTENSIONS))
            items.extend(found)
        elif os.path.exists(entry):
            items.append((entry, os.path.basename(entry)))
        else:
            raise FileNotFoundError(f"{entry}: no such file or directory")
    stems = {}
    for _, rel in items:
        stems.setdefault(os.path.splitext(rel)[0], []).append(rel)
    out = []
    for path, rel in items:
        stem, ext = os.path.splitext(rel)
        if len(stems[stem]) > 1:
            stem = stem + "_" + ext.lstrip(".").lower()
        out.append((path, stem))
    return out


def output_paths(output_dir: str, name: str) -> dict:
    base = os.path.join(output_dir, name)
    return {"seg": base + "_seg.png", "overlay": base + "_overlay.png", "edges": base + "_edges.png",
            "label_ids": base + "_labelIds.png"}


def write_outputs(image: np.ndarray, result: dict, output_dir: str, name: str, alpha: float = 0.5,
                  label_ids: bool = False) -> dict:
    """Writes the PNGs for one image; returns {kind: path}."""
    paths = output_paths(output_dir, name)
    os.makedirs(os.path.dirname(paths["seg"]) or ".", exist_ok=True)
    classes = result["classes"]
    visualize.write_png(paths["seg"], visualize.color_mask(classes))
    visualize.write_png(paths["overlay"], visualize.overlay(image, classes, alpha))
    visualize.write_png(paths["edges"], visualize.edge_image(result["edge"]))
    if label_ids:
        visualize.write_png(paths["label_ids"], visualize.label_ids_image(classes))
    else:
        paths.pop("label_ids")
    return paths


@dataclass
class PredictionSummary:
    written: list = field(default_factory=list)  # [(input path, {kind: output path})]
    failed: list = field(default_factory=list)  # [(input path, message)]


def predict_files(predictor: Predictor, items: list, output_dir: str, alpha: float = 0.5,
                  label_ids: bool = False, fail_fast: bool = False, progress: bool = True) -> PredictionSummary:
    """Runs ``predictor`` on ``items`` from :func:`find_images`; unreadable files are skipped
    with a warning (or raise with ``fail_fast``)."""
    from tqdm import tqdm

    summary = PredictionSummary()
    bar = tqdm(items, desc="predict", unit="img", disable=not progress)
    for path, name in bar:
        try:
            image = read_image(path)
        except ImageReadError as exc:
            if fail_fast:
                raise
            logger.warning("skipping %s", exc)
            summary.failed.append((path, str(exc)))
            continue
        result = predictor(image)
        summary.written.append((path, write_outputs(image, result, output_dir, name, alpha, label_ids)))
    return summary
