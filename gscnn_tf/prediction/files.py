"""Prediction on image files from a SavedModel export or a training checkpoint.

Both sources go through the same serving graph (:class:`gscnn_tf.export.GSCNNServingModule`):
a SavedModel's ``serving_image_tensor`` signature, or the same module built in memory
around the checkpoint's Keras model. Images are decoded with TensorFlow's decoders (the
ones the ``serving_default`` signature uses), so the CLI and a server agree pixel for pixel.

Per input image ``<name>`` the writer produces ``<name>_seg.png`` (the dataset's class
colours: the export's ``config.yaml`` asset or the checkpoint's config, Cityscapes by default),
``<name>_overlay.png`` (colours blended over the photo), ``<name>_edges.png`` (shape-stream
boundary probability as grey levels) and optionally ``<name>_labelIds.png`` (the dataset's
source label ids; Cityscapes label ids, the official evaluation's input format). Unreadable files are skipped and
reported; the caller decides the exit status.

Size limits, checked before anything is decoded: the file's bytes (``max_bytes``) and the pixel
count its header declares (``max_pixels``; PNG, JPEG, GIF and BMP headers are read by
:func:`gscnn_tf.export.image_headers.declared_size`, the serving graph's reader; WebP is checked
after decoding). With tiling (``tile_size``) an image larger than a tile is predicted tile by
tile (:func:`predict_tiled`) and ``max_pixels`` refuses nothing.
"""
from __future__ import annotations

import logging
import os
import stat
from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional, Sequence

import numpy as np
import tensorflow as tf

from gscnn_tf.deploy.tiles import blend_tiles
from gscnn_tf.prediction import visualize
from gscnn_tf.utils.serving_limits import DEFAULT_MAX_PIXELS

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
DEFAULT_MAX_FILE_BYTES = 64 * 2**20  # an image file larger than this is refused unread
FILE_KINDS = ("litert", "onnx")  # Predictor kinds run by gscnn_tf.deploy rather than TensorFlow


class ImageReadError(ValueError):
    """A file is missing or is not a decodable image."""


class Predictor:
    """``predictor(image)``: (H, W, 3) uint8 RGB -> {"classes": (H, W), "edge": (H, W), ...};
    ``dataset``: the :class:`gscnn_tf.config.DatasetConfig` its classes belong to;
    ``has_probabilities``: whether the outputs include "probabilities" (H, W, K) float32."""

    def __init__(self, fn: Callable, source: str, kind: str, dataset=None, has_probabilities: bool = False):
        from gscnn_tf.config import DatasetConfig

        self._fn = fn
        self.source = source
        self.kind = kind  # "saved_model", "checkpoint", or a model file's "litert" / "onnx"
        self.dataset = dataset if dataset is not None else DatasetConfig()
        self.has_probabilities = bool(has_probabilities)

    def __call__(self, image: np.ndarray) -> dict:
        image = np.asarray(image)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
            raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got {image.dtype} {image.shape}")
        if self.kind in FILE_KINDS:  # gscnn_tf.deploy: NumPy in, NumPy out, any image size
            return self._fn(image)
        out = self._fn(tf.constant(image[None]))
        return {key: value.numpy()[0] for key, value in out.items()}


def load_predictor(path: str, config_path: Optional[str] = None, version: Optional[int] = None,
                   with_probabilities: bool = False, num_threads: Optional[int] = None) -> Predictor:
    """A LiteRT ``.tflite`` or ONNX ``.onnx`` file (:mod:`gscnn_tf.deploy`; ``num_threads`` for
    its runtime; it pads or tiles any image size itself), a SavedModel (a version dir or an
    export root: highest version) or any checkpoint
    :func:`gscnn_tf.training.checkpoints.load_inference_model` accepts.

    ``with_probabilities``: a checkpoint's serving module also outputs the softmax (for
    :func:`predict_tiled`); a SavedModel has it when it was exported ``--with-probabilities``.
    """
    from gscnn_tf.deploy.runtime import file_format, load_model_file

    if file_format(path):
        from gscnn_tf.config import config_from_dict

        deployed = load_model_file(path, num_threads=num_threads)
        logger.info("loaded %s file %s (input %dx%d)", deployed.metadata["format"], path, *deployed.image_size)
        dataset = config_from_dict({"dataset": deployed.metadata["dataset"], "model": deployed.metadata["model"]}).dataset
        return Predictor(deployed.predict, path, deployed.metadata["format"], dataset)
    from gscnn_tf.export.serving_graph import build_serving_module
    from gscnn_tf.export.signatures import IMAGE_TENSOR_SIGNATURE, TENSOR_INPUT
    from gscnn_tf.export.versions import find_saved_model, is_saved_model_path

    if is_saved_model_path(path) or version is not None:
        directory = find_saved_model(path, version)
        logger.info("loading SavedModel %s", directory)
        loaded = tf.saved_model.load(directory)
        signature = loaded.signatures[IMAGE_TENSOR_SIGNATURE]
        predictor = Predictor(lambda x: signature(**{TENSOR_INPUT: x}), directory, "saved_model",
                              _export_dataset(directory), "probabilities" in signature.structured_outputs)
        predictor._loaded = loaded  # keep the restored object (and its variables) alive
        return predictor
    from gscnn_tf.config import load_config
    from gscnn_tf.training.checkpoints import load_inference_model

    config = load_config(config_path) if config_path else None
    model, config = load_inference_model(path, config)
    logger.info("loaded checkpoint %s", path)
    module = build_serving_module(model, config, with_probabilities=with_probabilities)
    predictor = Predictor(module.serve_images, path, "checkpoint", config.dataset, with_probabilities)
    predictor._module = module
    return predictor


def _export_dataset(directory: str):
    """The dataset description in a SavedModel's ``assets/config.yaml`` (exports written before
    it had one: Cityscapes)."""
    from gscnn_tf.config import load_config
    from gscnn_tf.export.signatures import CONFIG_ASSET

    path = os.path.join(directory, "assets", CONFIG_ASSET)
    return load_config(path).dataset if os.path.isfile(path) else None


def read_file_limited(path: str, max_bytes: int = DEFAULT_MAX_FILE_BYTES) -> bytes:
    """The bytes of a *regular* file of at most ``max_bytes`` (0 = no limit).

    Opened non-blocking and checked on the open descriptor (no race with a rename): a FIFO,
    a device (a ``*.png`` symlink to ``/dev/zero``), a socket or a directory is refused
    instead of hanging or being read without end; reading stops at the limit even if the
    file grows meanwhile.
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise ImageReadError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            kind = ("a FIFO" if stat.S_ISFIFO(info.st_mode) else "a device" if stat.S_ISCHR(info.st_mode)
                    or stat.S_ISBLK(info.st_mode) else "a directory" if stat.S_ISDIR(info.st_mode) else "a socket"
                    if stat.S_ISSOCK(info.st_mode) else "not a regular file")
            raise ImageReadError(f"{path}: not a regular file ({kind}); only image files are read")
        if max_bytes and info.st_size > max_bytes:
            raise ImageReadError(f"{path}: {info.st_size} bytes, more than the limit of {max_bytes} "
                                 "(raise it with --max-file-size)")
        chunks, size = [], 0
        while True:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
            if max_bytes and size > max_bytes:
                raise ImageReadError(f"{path}: more than the limit of {max_bytes} bytes (raise it with "
                                     "--max-file-size)")
        return b"".join(chunks)
    except OSError as exc:
        raise ImageReadError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    finally:
        os.close(fd)


def _too_many_pixels(path: str, height: int, width: int, max_pixels: int, where: str) -> ImageReadError:
    return ImageReadError(f"{path}: {height}x{width} (HxW) pixels {where}, more than the limit of {max_pixels} "
                          "pixels; predict it in tiles with --tile-size HxW, or raise --max-pixels (0 = no limit)")


def declared_pixels(path: str, data: bytes) -> tuple:
    """(height, width) that the header of the encoded image ``data`` declares, (-1, -1) when its
    format's header is not read (WebP); nothing is decoded
    (:func:`gscnn_tf.export.image_headers.declared_size`)."""
    from gscnn_tf.export.image_headers import declared_size

    try:
        height, width = declared_size(tf.constant(data))
    except (tf.errors.InvalidArgumentError, tf.errors.UnknownError) as exc:  # a JPEG without a readable SOF
        raise ImageReadError(f"{path}: not a readable image ({exc.message.splitlines()[0]})") from exc
    return int(height), int(width)


def read_image(path: str, max_bytes: int = DEFAULT_MAX_FILE_BYTES, max_pixels: int = 0) -> np.ndarray:
    """File -> (H, W, 3) uint8 RGB (grayscale and RGBA converted), TensorFlow's decoders.

    Only regular files of at most ``max_bytes`` are read (:func:`read_file_limited`); an image
    whose header declares more than ``max_pixels`` pixels (0 = no limit) is refused before it is
    decoded (:func:`declared_pixels`; a format whose header is not read, after decoding).
    """
    data = read_file_limited(path, max_bytes)
    if not data:
        raise ImageReadError(f"{path}: empty file")
    if max_pixels:
        height, width = declared_pixels(path, data)
        if height >= 0 and height * width > max_pixels:
            raise _too_many_pixels(path, height, width, max_pixels, "(declared in its header)")
    try:
        image = tf.io.decode_image(data, channels=3, dtype=tf.uint8, expand_animations=False)
    except (tf.errors.InvalidArgumentError, tf.errors.UnknownError) as exc:
        raise ImageReadError(f"{path}: not a readable image ({exc.message.splitlines()[0]})") from exc
    if max_pixels and int(image.shape[0]) * int(image.shape[1]) > max_pixels:
        raise _too_many_pixels(path, int(image.shape[0]), int(image.shape[1]), max_pixels, "(decoded)")
    return image.numpy()


def predict_tiled(predictor: Predictor, image: np.ndarray, tile_size: Sequence[int], overlap: int = 0,
                  window: str = "linear") -> dict:
    """``predictor`` on an (H, W, 3) uint8 image, one tile of ``tile_size`` = (th, tw) at a time.

    Tiles step by ``tile - overlap`` (:func:`gscnn_tf.deploy.tiles.tile_grid`, the last one ending
    at the border). Each tile's per-class probabilities (K channels) and edge probability are
    blended in the overlaps by :func:`gscnn_tf.deploy.tiles.blend_tiles` (``window``
    ``"linear"``: highest in the tile centre; :func:`~gscnn_tf.deploy.tiles.blend_window`), one
    row of tiles at a time; the classes are the blend's arg-max. A predictor without
    "probabilities" (a SavedModel exported without ``--with-probabilities``) contributes its
    classes as one-hot votes instead (a weighted majority vote in the overlaps). An image that
    fits in one tile is predicted whole, exactly as without tiling.

    Returns {"classes": (H, W) in the predictor's dtype, "edge": (H, W) float32}. Memory: the
    image, these outputs, one row of tiles' blend ((K + 2) x th x W x 4 bytes) and one tile's
    network run, so it grows with the image's pixels by a few bytes each, not by the network's
    activations (measured in docs/DEPLOYMENT.md).
    """
    height, width = int(image.shape[0]), int(image.shape[1])
    th, tw = int(tile_size[0]), int(tile_size[1])
    if height <= th and width <= tw:
        return predictor(image)
    num_classes = len(predictor.dataset.class_names)
    th, tw = min(th, height), min(tw, width)
    result = {}

    def run_tile(top, left):
        out = predictor(np.ascontiguousarray(image[top:top + th, left:left + tw]))
        if not result:
            result["classes"] = np.empty((height, width), out["classes"].dtype)
            result["edge"] = np.empty((height, width), np.float32)
        if predictor.has_probabilities:
            probs = out["probabilities"]
        else:
            if out["classes"].size and int(out["classes"].max()) >= num_classes:
                raise ValueError(f"class {int(out['classes'].max())} predicted; the dataset has {num_classes} classes")
            probs = np.eye(num_classes, dtype=np.float32)[out["classes"]]
        return np.concatenate([probs, out["edge"][..., None]], axis=-1)

    def finish(begin, end, blended):
        result["classes"][begin:end] = np.argmax(blended[..., :-1], axis=-1)
        result["edge"][begin:end] = blended[..., -1]

    blend_tiles((height, width), tile_size, overlap, run_tile, finish, window)
    return result


def find_images(inputs: Iterable[str], recursive: bool = False) -> list:
    """Files and folders -> [(path, output name)]; output names keep sub-folders of a folder.

    A file given explicitly is used whatever its extension; folders contribute files with
    an image extension. Two inputs with the same name stem (``a.png``, ``a.jpg``) keep
    their extension in the output name (``a_png``, ``a_jpg``) instead of overwriting.
    Inputs whose output names would still be equal (``x/a.png`` and ``y/a.png`` given as
    files, or two folders holding ``a.png``) get ``_2``, ``_3``, ... in input order, so no
    output is ever written twice in one run; each renaming is logged.
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
    exts = {}
    for _, rel in items:
        stem, ext = os.path.splitext(rel)
        exts.setdefault(stem, set()).add(ext.lower())
    out = []
    taken = set()
    for path, rel in items:
        stem, ext = os.path.splitext(rel)
        if len(exts[stem]) > 1:
            stem = stem + "_" + ext.lstrip(".").lower()
        # Compare case-insensitively: on macOS / Windows file systems A.png and a.png collide.
        name, k = stem, 1
        while name.lower() in taken:
            k += 1
            name = f"{stem}_{k}"
        if name != stem:
            logger.warning("%s: another input has the output name %s; writing %s_* instead", path, stem, name)
        taken.add(name.lower())
        out.append((path, name))
    return out


def output_paths(output_dir: str, name: str) -> dict:
    base = os.path.join(output_dir, name)
    return {"seg": base + "_seg.png", "overlay": base + "_overlay.png", "edges": base + "_edges.png",
            "label_ids": base + "_labelIds.png"}


def write_outputs(image: np.ndarray, result: dict, output_dir: str, name: str, alpha: float = 0.5,
                  label_ids: bool = False, dataset=None) -> dict:
    """Writes the PNGs for one image in the colours and source ids of ``dataset`` (a
    :class:`gscnn_tf.config.DatasetConfig`; None: Cityscapes); returns {kind: path}."""
    paths = output_paths(output_dir, name)
    os.makedirs(os.path.dirname(paths["seg"]) or ".", exist_ok=True)
    classes = result["classes"]
    colors = None if dataset is None else dataset.class_colors
    visualize.write_png(paths["seg"], visualize.color_mask(classes, colors))
    visualize.write_png(paths["overlay"], visualize.overlay(image, classes, alpha, colors))
    if "edge" in result:  # a LiteRT / ONNX file exported with --no-edge-output has none
        visualize.write_png(paths["edges"], visualize.edge_image(result["edge"]))
    else:
        paths.pop("edges")
    if label_ids:
        source_ids = None if dataset is None else dataset.source_id_lut()
        visualize.write_png(paths["label_ids"], visualize.label_ids_image(classes, source_ids))
    else:
        paths.pop("label_ids")
    return paths


@dataclass
class PredictionSummary:
    written: list = field(default_factory=list)  # [(input path, {kind: output path})]
    failed: list = field(default_factory=list)  # [(input path, message)]


def predict_files(predictor: Predictor, items: list, output_dir: str, alpha: float = 0.5,
                  label_ids: bool = False, fail_fast: bool = False, progress: bool = True,
                  max_bytes: int = DEFAULT_MAX_FILE_BYTES, max_pixels: int = DEFAULT_MAX_PIXELS,
                  tile_size: Optional[Sequence[int]] = None, tile_overlap: int = 0) -> PredictionSummary:
    """Runs ``predictor`` on ``items`` from :func:`find_images`; unreadable files (not regular
    files, larger than ``max_bytes``, not images, more than ``max_pixels`` pixels without tiling)
    are skipped with a warning (or raise with ``fail_fast``). With ``tile_size`` (th, tw) images
    larger than a tile are predicted tile by tile (:func:`predict_tiled`, ``tile_overlap``
    pixels blended) whatever their pixel count; give such a predictor ``with_probabilities``."""
    from tqdm import tqdm

    summary = PredictionSummary()
    bar = tqdm(items, desc="predict", unit="img", disable=not progress)
    for path, name in bar:
        try:
            tiles = tile_size or predictor.kind in FILE_KINDS  # a LiteRT / ONNX runner always tiles
            image = read_image(path, max_bytes, 0 if tiles else max_pixels)
        except ImageReadError as exc:
            if fail_fast:
                raise
            logger.warning("skipping %s", exc)
            summary.failed.append((path, str(exc)))
            continue
        result = predict_tiled(predictor, image, tile_size, tile_overlap) if tile_size else predictor(image)
        summary.written.append((path, write_outputs(image, result, output_dir, name, alpha, label_ids,
                                                         predictor.dataset)))
    return summary
