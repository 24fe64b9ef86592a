"""Run an exported ``.tflite`` (LiteRT) or ``.onnx`` Gated-SCNN file with NumPy and the runtime only.

The file takes one RGB uint8 image of the fixed size chosen at export, (1, H, W, 3), and
returns ``classes`` uint8 (1, H, W) (train ids) and, unless exported without it, ``edge``
float32 (1, H, W) (boundary probability). Its sidecar ``<file>.json`` (written by
:func:`gscnn_tf.export.file_export.export_model_file`) holds the input size, the dataset
description (class names, colours, label values) and the export's own parity check.

:meth:`DeployedModel.predict` accepts an image of any size: a smaller image is padded by
repeating its border pixels (as the SavedModel pads) and cropped back; a larger one is run
tile by tile (:mod:`gscnn_tf.deploy.tiles`) and stitched, each pixel taken from the tile in
which it lies farthest from a border (class maps cannot be blended; the TensorFlow tiled
inference blends probabilities instead).

Example::

    model = load_model_file("export/gscnn_360x480_int8.tflite", num_threads=2)
    out = model.predict(rgb_uint8)        # {"classes": (H, W) uint8, "edge": (H, W) float32}
"""
from __future__ import annotations

import json
import os
from typing import Optional

import numpy as np

from gscnn_tf.deploy.tiles import DEFAULT_TILE_OVERLAP, owned_ranges

FILE_SUFFIXES = {".tflite": "litert", ".onnx": "onnx"}


class DeployError(RuntimeError):
    """A model file cannot be loaded or run (missing runtime, wrong file, wrong input)."""


def sidecar_path(path: str) -> str:
    """Where the export writes the file's metadata: ``<file>.json``."""
    return path + ".json"


def file_format(path: str) -> Optional[str]:
    """``"litert"`` for ``.tflite``, ``"onnx"`` for ``.onnx``, else None."""
    return FILE_SUFFIXES.get(os.path.splitext(path)[1].lower())


class DeployedModel:
    """A loaded model file: ``run`` one (1, H, W, 3) uint8 batch at the export size, or
    ``predict`` an (h, w, 3) uint8 image of any size. ``metadata``: the sidecar's dict."""

    def __init__(self, path: str, metadata: dict, tile_overlap: Optional[int] = None):
        self.path = path
        self.metadata = metadata
        self.image_size = tuple(int(v) for v in metadata["image_size"])
        if tile_overlap is None:
            tile_overlap = min(DEFAULT_TILE_OVERLAP, min(self.image_size) // 4)
        self.tile_overlap = int(tile_overlap)
        if not 0 <= self.tile_overlap < min(self.image_size):
            raise DeployError(f"tile overlap {tile_overlap}: must be in [0, {min(self.image_size)})")

    def run(self, batch: np.ndarray) -> dict:  # pragma: no cover - implemented by the runtimes
        raise NotImplementedError

    def predict(self, image: np.ndarray) -> dict:
        image = np.asarray(image)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
            raise DeployError(f"expected an (H, W, 3) uint8 RGB image, got {image.dtype} {image.shape}")
        height, width = image.shape[:2]
        th, tw = self.image_size
        # Smaller than a tile along an axis: repeat the border pixels up to the tile, crop back.
        padded = np.pad(image, [(0, max(0, th - height)), (0, max(0, tw - width)), (0, 0)], mode="edge")
        ph, pw = padded.shape[:2]
        out = {}
        for top, row_begin, row_end in owned_ranges(ph, th, self.tile_overlap):
            for left, col_begin, col_end in owned_ranges(pw, tw, self.tile_overlap):
                tile = self.run(np.ascontiguousarray(padded[None, top:top + th, left:left + tw]))
                for key, value in tile.items():
                    if key not in out:
                        out[key] = np.empty((ph, pw), value.dtype)
                    out[key][row_begin:row_end, col_begin:col_end] = \
                        value[0, row_begin - top:row_end - top, col_begin - left:col_end - left]
        return {key: value[:height, :width] for key, value in out.items()}

    def _check_batch(self, batch: np.ndarray) -> np.ndarray:
        batch = np.asarray(batch)
        if batch.dtype != np.uint8 or batch.shape != (1,) + self.image_size + (3,):
            raise DeployError(f"{self.path}: expects a (1, {self.image_size[0]}, {self.image_size[1]}, 3) uint8 "
                              f"batch, got {batch.dtype} {batch.shape}")
        return batch


class LiteRTModel(DeployedModel):
    """A ``.tflite`` file in ``ai_edge_litert``'s interpreter (XNNPACK on by default)."""

    def __init__(self, path: str, metadata: dict, num_threads: Optional[int] = None, **kwargs):
        super().__init__(path, metadata, **kwargs)
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError as exc:
            raise DeployError(f"{path}: running a .tflite file needs ai-edge-litert "
                              "(pip install 'gscnn_tf[litert]')") from exc
        try:
            self._interpreter = Interpreter(model_path=path, num_threads=num_threads)
            self._runner = self._interpreter.get_signature_runner()
        except (ValueError, RuntimeError) as exc:
            raise DeployError(f"{path}: LiteRT cannot load it ({exc})") from exc
        self.input_name = self._interpreter.get_signature_list()["serving_default"]["inputs"][0]

    def run(self, batch: np.ndarray) -> dict:
        return dict(self._runner(**{self.input_name: self._check_batch(batch)}))


class OnnxModel(DeployedModel):
    """An ``.onnx`` file in an ``onnxruntime`` CPU session."""

    def __init__(self, path: str, metadata: dict, num_threads: Optional[int] = None, **kwargs):
        super().__init__(path, metadata, **kwargs)
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise DeployError(f"{path}: running an .onnx file needs onnxruntime "
                              "(pip install 'gscnn_tf[onnx]')") from exc
        options = ort.SessionOptions()
        if num_threads:
            options.intra_op_num_threads = int(num_threads)
            options.inter_op_num_threads = 1
        try:
            self._session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types
            raise DeployError(f"{path}: ONNX Runtime cannot load it ({exc})") from exc
        self.input_name = self._session.get_inputs()[0].name
        self._outputs = [o.name for o in self._session.get_outputs()]

    def run(self, batch: np.ndarray) -> dict:
        values = self._session.run(self._outputs, {self.input_name: self._check_batch(batch)})
        return dict(zip(self._outputs, values))


def read_metadata(path: str) -> dict:
    """The sidecar JSON of a model file (a clear error when it is missing or unreadable)."""
    meta_path = sidecar_path(path)
    try:
        with open(meta_path, encoding="utf-8") as f:
            metadata = json.load(f)
    except FileNotFoundError:
        raise DeployError(f"{meta_path}: missing; export_savedmodel.py writes it next to the model file "
                          "(input size, classes, colours)") from None
    except (OSError, ValueError) as exc:
        raise DeployError(f"{meta_path}: unreadable ({exc})") from exc
    if "image_size" not in metadata:
        raise DeployError(f"{meta_path}: no image_size; not written by export_savedmodel.py")
    return metadata


def load_model_file(path: str, num_threads: Optional[int] = None,
                    tile_overlap: Optional[int] = None) -> DeployedModel:
    """A :class:`LiteRTModel` or :class:`OnnxModel` for ``path`` (by its suffix) and its sidecar."""
    fmt = file_format(path)
    if fmt is None:
        raise DeployError(f"{path}: not a model file (expected {' or '.join(FILE_SUFFIXES)})")
    if not os.path.isfile(path):
        raise DeployError(f"{path}: no such file")
    cls = LiteRTModel if fmt == "litert" else OnnxModel
    return cls(path, read_metadata(path), num_threads=num_threads, tile_overlap=tile_overlap)
