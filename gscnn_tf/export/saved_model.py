"""SavedModel export for TF Serving: in-graph decoding, normalisation, padding and cropping.

The exported directory ``<export_dir>/<version>/`` is a plain SavedModel that TF Serving
(or ``tf.saved_model.load`` in a process without this package) loads as it is:

* ``serving_default`` -- input ``image_bytes``: tf.string (B,), each a PNG, JPEG, GIF (first
  frame), BMP or WebP file of any size; grayscale and RGBA are converted to RGB.
* ``serving_image_tensor`` -- input ``images``: uint8 (B, H, W, 3) RGB.

Both return
``classes`` uint8 (B, H, W) train ids (int32 when the model has more than 255 classes),
``edge`` float32 (B, H, W) shape-stream boundary probability,
``height``/``width`` int32 (B,) each image's own size, and with ``with_probabilities``
``probabilities`` float32 (B, H, W, K) softmax.

**Sizes.** Every image is padded (edge replication by default, i.e. the border pixels are
repeated, so the in-graph Canny sees no artificial border) up to the next multiple of the
model's stride (8; 16 at output stride 16), run, and the outputs are cropped back to the
image's own size. Images in one ``serving_default`` batch may differ in size: when all
sizes are equal the batch runs in one model call; otherwise each image runs on its own
(a loop inside the graph) so that **an image's result never depends on what else is in
the batch** (this also holds under TF Serving's server-side batching). The outputs are
then (B, max H, max W): pixels outside an image's own ``height`` x ``width`` hold
``classes`` = 255 (:data:`CLASSES_FILL`) and ``edge``/``probabilities`` = 0; clients crop
with the ``height`` / ``width`` outputs. A batch of one comes back at exactly its size.

**Memory.** The network runs on at most ``chunk_pixels`` pixels at a time (or one image
when an image is larger): a batch of equal-sized images runs in chunks, a mixed-size batch
one image at a time, one after the other, so the network's memory follows the largest
image, not the request. What a request still holds at once is its decoded images (3
bytes per pixel) and outputs (5, plus 4 per class with probabilities). Limits, refused
with ``InvalidArgumentError`` naming the element: ``max_pixels`` per image (read from the
header for PNG, JPEG, GIF and BMP, so a decompression bomb is refused before decoding) and
``max_request_pixels`` per request. :func:`export_saved_model` sets both by default
(:data:`DEFAULT_MAX_PIXELS`, :data:`DEFAULT_MAX_REQUEST_PIXELS`; figures in docs/SERVING.md).

**Errors.** Bytes that are not an image raise ``InvalidArgumentError`` naming the element
(``image_bytes[i] is not a PNG, JPEG, GIF, BMP or WebP image ...``); a PNG without its IEND
chunk or a JPEG without an end-of-image marker (a truncated upload) is refused naming the
element; other corrupt data raises the decoder's ``InvalidArgumentError``. An empty
``serving_image_tensor`` batch is an ``InvalidArgumentError``. Requests are independent,
so the next one works.

Assets: ``assets/labels.json`` (class names, colours, ignore/fill values, normalisation,
signatures) and ``assets/config.yaml`` (the ExperimentConfig used), and TF Serving warmup
requests in ``assets.extra/tf_serving_warmup_requests`` (see :mod:`gscnn_tf.export.warmup`).
"""
from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import re
import shutil
import tempfile
from typing import Optional, Sequence

import numpy as np
import tensorflow as tf

from gscnn_tf import labels as label_tables
from gscnn_tf.checkpoints import non_finite_weights
from gscnn_tf.config import ExperimentConfig, config_to_dict, save_config
from gscnn_tf.utils.atomic import atomic_directory, is_temporary_name
from gscnn_tf.utils.serving_limits import DEFAULT_CHUNK_PIXELS, DEFAULT_MAX_PIXELS, DEFAULT_MAX_REQUEST_PIXELS

logger = logging.getLogger(__name__)

DEFAULT_SIGNATURE = "serving_default"
IMAGE_TENSOR_SIGNATURE = "serving_image_tensor"
BYTES_INPUT = "image_bytes"
TENSOR_INPUT = "images"
CLASSES_FILL = 255  # `classes` value outside an image's own area in a mixed-size batch
LABELS_ASSET = "labels.json"
CONFIG_ASSET = "config.yaml"
PAD_MODES = ("edge", "mean")


class ExportError(RuntimeError):
    """The export could not be written or did not pass its self-check."""


def normalization_for_config(config: ExperimentConfig) -> tuple:
    """(mean, std) RGB tuples in 0..255 units for the configured backbone (ARCHITECTURE.md)."""
    from gscnn_tf.backbones import normalization_for

    mean, std = normalization_for(config.model.backbone)
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def pad_multiple_for(config: ExperimentConfig) -> int:
    """Input sizes the model accepts: multiples of 8 at output stride 8, of 16 at 16."""
    return 16 if int(config.model.output_stride) == 16 else 8


class _Holder:
    """Keeps the Keras model out of tf.Module's object tracking (only its variables are saved)."""

    def __init__(self, model):
        self.model = model


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_JPEG_SOI = b"\xff\xd8\xff"


def _header_reader(data: tf.Tensor, length: int):
    """``head(pos, n)``: bytes ``pos:pos+n`` of ``data`` (scalar or batch) with ``length`` zero bytes appended."""
    padded = tf.strings.join([data, tf.constant(b"\0" * length)])
    return lambda pos, n: tf.strings.substr(padded, pos, n)


class GSCNNServingModule(tf.Module):
    """The serving graph around a Keras inference model (image -> {seg_logits, edge}).

    Used for the export and, in memory, by :mod:`gscnn_tf.predict` for checkpoints, so a
    checkpoint and its SavedModel go through the same preprocessing code.
    """

    def __init__(
        self,
        model,
        mean: Sequence[float],
        std: Sequence[float],
        pad_multiple: int = 8,
        num_classes: Optional[int] = None,
        with_probabilities: bool = False,
        pad_mode: str = "edge",
        max_pixels: int = 0,
        max_request_pixels: int = 0,
        chunk_pixels: int = DEFAULT_CHUNK_PIXELS,
        name: str = "gscnn_serving",
    ):
        super().__init__(name=name)
        if pad_mode not in PAD_MODES:
            raise ValueError(f"pad_mode {pad_mode!r}: expected one of {PAD_MODES}")
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(f"mean/std must be 3 RGB values with std > 0, got {mean}, {std}")
        self._holder = _Holder(model)
        # Saved explicitly (as keras.export.ExportArchive does) instead of the Keras object graph.
        self.model_variables = list(model.variables)
        if num_classes is None:
            num_classes = int(model.output["seg_logits"].shape[-1]) if isinstance(model.output, dict) else None
        self.num_classes = num_classes
        self.classes_dtype = tf.uint8 if (num_classes is not None and num_classes <= 255) else tf.int32
        self.with_probabilities = bool(with_probabilities)
        self.pad_multiple = int(pad_multiple)
        self.pad_mode = pad_mode
        self.max_pixels = int(max_pixels)  # 0: no limit
        self.max_request_pixels = int(max_request_pixels)  # 0: no limit
        self.chunk_pixels = int(chunk_pixels)  # 0: the whole batch in one call
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)
        # The network is traced once, as its own function, and called from every signature
        # (and both branches of the mixed-size batch logic): one copy in the saved graph.
        self.forward = tf.function(
            self._forward, input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)], autograph=False
        )
        self.serve_bytes = tf.function(
            self._serve_bytes, input_signature=[tf.TensorSpec([None], tf.string, name=BYTES_INPUT)]
        )
        self.serve_images = tf.function(
            self._serve_images, input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name=TENSOR_INPUT)]
        )

    @property
    def model(self):
        return self._holder.model

    # ------------------------------------------------------------------ graph pieces

    def _pad(self, images: tf.Tensor) -> tf.Tensor:
        """uint8 (B,h,w,3) -> float32 normalised (B,hp,wp,3), hp/wp the next multiples."""
        shape = tf.shape(images)
        h, w = shape[1], shape[2]
        m = self.pad_multiple
        hp = (h + m - 1) // m * m
        wp = (w + m - 1) // m * m
        x = tf.cast(images, tf.float32)
        mean = tf.constant(self.mean, tf.float32)
        std = tf.constant(self.std, tf.float32)
        if self.pad_mode == "edge":
            # Replicate the border rows/columns: gather with clamped indices works for any amount.
            x = tf.gather(x, tf.minimum(tf.range(hp), h - 1), axis=1)
            x = tf.gather(x, tf.minimum(tf.range(wp), w - 1), axis=2)
            return (x - mean) / std
        x = (x - mean) / std
        return tf.pad(x, [[0, 0], [0, hp - h], [0, wp - w], [0, 0]])  # 0 = the mean colour

    def _forward(self, x):
        out = self.model(x, training=False)
        return {"seg_logits": tf.cast(out["seg_logits"], tf.float32), "edge": tf.cast(out["edge"], tf.float32)}

    def _run(self, images: tf.Tensor) -> dict:
        """uint8 (B,h,w,3), one size -> outputs cropped to (B,h,w)."""
        shape = tf.shape(images)
        h, w = shape[1], shape[2]
        out = self.forward(self._pad(images))
        logits = out["seg_logits"][:, :h, :w, :]
        edge = out["edge"][:, :h, :w, 0]
        result = {"classes": tf.cast(tf.argmax(logits, axis=-1), self.classes_dtype), "edge": edge}
        if self.with_probabilities:
            result["probabilities"] = tf.nn.softmax(logits, axis=-1)
        return result

    def _run_chunked(self, images: tf.Tensor) -> dict:
        """Like :meth:`_run` on a non-empty batch, but the network sees at most ``chunk_pixels``
        (padded) pixels per call, one call after the other: memory follows the chunk, not the batch."""
        if self.chunk_pixels <= 0:
            return self._run(images)
        shape = tf.shape(images, out_type=tf.int64)
        n, h, w = shape[0], shape[1], shape[2]
        m = self.pad_multiple
        padded = ((h + m - 1) // m * m) * ((w + m - 1) // m * m)
        per_call = tf.clip_by_value(self.chunk_pixels // tf.maximum(padded, 1), 1, tf.maximum(n, 1))
        chunks = (n + per_call - 1) // per_call
        keys = self._output_keys()

        def body(c, *arrays):
            start = c * per_call
            out = self._run(images[start:tf.minimum(start + per_call, n)])
            return (c + 1, *[array.write(tf.cast(c, tf.int32), out[key]) for key, array in zip(keys, arrays)])

        arrays = [tf.TensorArray(self._output_dtype(key), size=tf.cast(chunks, tf.int32), infer_shape=False,
                                 element_shape=[None, None, None] + ([self.num_classes] if key == "probabilities"
                                                                    else []))
                  for key in keys]
        # parallel_iterations=1: chunks run one after the other (the point of chunking).
        _, *arrays = tf.while_loop(lambda c, *_: c < chunks, body, [tf.constant(0, tf.int64), *arrays],
                                   parallel_iterations=1)
        return {key: array.concat() for key, array in zip(keys, arrays)}  # (n, h, w[, K])

    def _check_request(self, total, what: str, index=None) -> list:
        """Control dependencies that reject a request above ``max_request_pixels`` in total."""
        if self.max_request_pixels <= 0:
            return []
        where = [] if index is None else [index]
        message = tf.strings.format(
            what + ("[{}]" if where else "") + " brings this request to {} pixels, more than this export's limit "
            "of {} pixels per request; send fewer or smaller images per request",
            where + [total, tf.constant(self.max_request_pixels, tf.int64)],
        )
        return [tf.debugging.Assert(total <= self.max_request_pixels, [message])]

    def _check_complete(self, data: tf.Tensor, index) -> list:
        """A PNG must contain its IEND chunk and a JPEG an end-of-image marker (FF D9).

        A truncated upload then fails naming the element instead of with the decoder's
        anonymous message. Both always occur in a complete file, so nothing valid is refused.
        """
        head = _header_reader(data, 8)
        is_png = tf.equal(head(0, 8), _PNG_SIGNATURE)
        is_jpeg = tf.equal(head(0, 3), _JPEG_SOI)

        def contains(marker: bytes):
            raw = tf.io.decode_raw(data, tf.uint8)
            k = len(marker)
            size = tf.shape(raw)[0]
            hits = tf.ones([tf.maximum(size - k + 1, 0)], tf.bool)
            for j, byte in enumerate(marker):
                hits = tf.logical_and(hits, tf.equal(raw[j:size - k + 1 + j], byte))
            return tf.reduce_any(hits)

        complete = tf.case([(is_png, lambda: contains(b"IEND")), (is_jpeg, lambda: contains(b"\xff\xd9"))],
                           default=lambda: tf.constant(True), exclusive=True)
        message = tf.where(is_png, *[
            tf.strings.format(BYTES_INPUT + "[{}] is a truncated " + kind + ", {} bytes; send the complete file",
                              [index, tf.strings.length(data)])
            for kind in ("PNG (no IEND chunk)", "JPEG (no end-of-image marker)")])
        return [tf.debugging.Assert(complete, [message])]

    def _check_size(self, height, width, what: str, index=None) -> list:
        """Control dependencies that reject images above ``max_pixels`` (protects the server's memory).

        ``what`` names the input; with ``index`` it is followed by ``[index]``.
        """
        if self.max_pixels <= 0:
            return []
        where = [] if index is None else [index]
        message = tf.strings.format(
            what + ("[{}]" if where else "") + " is {}x{} pixels, more than this export's limit of {} pixels",
            where + [height, width, tf.constant(self.max_pixels, tf.int64)],
        )
        too_big = tf.cast(height, tf.int64) * tf.cast(width, tf.int64) > self.max_pixels
        return [tf.debugging.Assert(tf.logical_not(too_big), [message])]

    @staticmethod
    def _declared_size(data: tf.Tensor):
        """(height, width) int64 that an encoded image's header declares, (-1, -1) if not read.

        Read from the header alone (PNG IHDR, JPEG SOF via ``extract_jpeg_shape``, GIF logical
        screen, BMP BITMAPINFOHEADER), so ``max_pixels`` can refuse a decompression bomb (a
        few KB that decode to gigabytes) before the decoder allocates it. WebP and unusual
        headers give -1: the check after decoding still covers them.
        """
        head = _header_reader(data, 26)

        def uint(pos, n, big_endian):
            digits = tf.cast(tf.io.decode_raw(head(pos, n), tf.uint8), tf.int64)
            weights = tf.constant([256**k for k in (range(n - 1, -1, -1) if big_endian else range(n))], tf.int64)
            return tf.reduce_sum(digits * weights)

        def bmp():
            height = uint(22, 4, False)  # signed: negative for top-down bitmaps
            height = tf.where(height >= 2**31, 2**32 - height, height)
            return height, uint(18, 4, False)

        def jpeg():
            shape = tf.cast(tf.image.extract_jpeg_shape(data), tf.int64)
            return shape[0], shape[1]

        is_png = tf.logical_and(tf.equal(head(0, 8), _PNG_SIGNATURE), tf.equal(head(12, 4), b"IHDR"))
        is_bmp = tf.logical_and(tf.equal(head(0, 2), b"BM"), uint(14, 4, False) >= 40)
        height, width = tf.case(
            [
                (is_png, lambda: (uint(20, 4, True), uint(16, 4, True))),
                (tf.equal(head(0, 3), _JPEG_SOI), jpeg),
                (tf.equal(head(0, 3), b"GIF"), lambda: (uint(8, 2, False), uint(6, 2, False))),
                (is_bmp, bmp),
            ],
            default=lambda: (tf.constant(-1, tf.int64), tf.constant(-1, tf.int64)),
            exclusive=True,
        )
        # Headers hold up to 32-bit sizes; capping at 2**31 keeps height * width inside int64.
        return tf.minimum(height, 2**31), tf.minimum(width, 2**31)

    def _serve_images(self, images):
        images = tf.ensure_shape(images, [None, None, None, 3])
        shape = tf.shape(images)
        message = tf.strings.format(TENSOR_INPUT + " has shape {}: send at least one image of at least 1x1 pixels",
                                    [shape])
        checks = [tf.debugging.Assert(tf.reduce_all(shape[:3] > 0), [message])]
        checks += self._check_size(shape[1], shape[2], TENSOR_INPUT)
        total = tf.reduce_prod(tf.cast(shape[:3], tf.int64))
        checks += self._check_request(total, TENSOR_INPUT)
        with tf.control_dependencies(checks):
            images = tf.identity(images)
        result = self._run_chunked(images)
        shape = tf.shape(images)
        result["height"] = tf.fill([shape[0]], shape[1])
        result["width"] = tf.fill([shape[0]], shape[2])
        return result

    def _check_headers(self, image_bytes: tf.Tensor) -> tf.Tensor:
        """Readable error for elements that are not images at all (before the decoder's).

        Returns a True scalar that depends on the assertion; call only for a non-empty batch.
        """
        head = _header_reader(image_bytes, 12)
        known = tf.reduce_any(
            tf.stack(
                [
                    tf.equal(head(0, 8), _PNG_SIGNATURE),
                    tf.equal(head(0, 3), _JPEG_SOI),
                    tf.equal(head(0, 6), b"GIF87a"),
                    tf.equal(head(0, 6), b"GIF89a"),
                    tf.equal(head(0, 2), b"BM"),
                    tf.logical_and(tf.equal(head(0, 4), b"RIFF"), tf.equal(head(8, 4), b"WEBP")),
                ]
            ),
            axis=0,
        )
        first_bad = tf.argmin(tf.cast(known, tf.int32), output_type=tf.int32)
        message = tf.strings.format(
            BYTES_INPUT + "[{}] is not a PNG, JPEG, GIF, BMP or WebP image ({} bytes, unrecognised header)",
            [first_bad, tf.strings.length(tf.gather(image_bytes, first_bad))],
        )
        with tf.control_dependencies([tf.debugging.Assert(tf.reduce_all(known), [message])]):
            return tf.constant(True)

    def _serve_bytes(self, image_bytes):
        image_bytes = tf.reshape(image_bytes, [-1])
        n = tf.shape(image_bytes)[0]
        checks = tf.cond(tf.equal(n, 0), lambda: tf.constant(True), lambda: self._check_headers(image_bytes))
        with tf.control_dependencies([checks]):
            n = tf.identity(n)

        def decode(i, total, images, heights, widths):
            data = image_bytes[i]
            if self.max_pixels > 0 or self.max_request_pixels > 0:  # refuse what the header declares first
                declared_h, declared_w = self._declared_size(data)
                checks = self._check_size(declared_h, declared_w, BYTES_INPUT, i)
                declared = tf.maximum(declared_h, 0) * tf.maximum(declared_w, 0)
                checks += self._check_request(total + declared, BYTES_INPUT, i)
                with tf.control_dependencies(checks):
                    data = tf.identity(data)
            with tf.control_dependencies(self._check_complete(data, i)):
                data = tf.identity(data)
            img = tf.io.decode_image(data, channels=3, dtype=tf.uint8, expand_animations=False)
            img = tf.ensure_shape(img, [None, None, 3])
            s = tf.shape(img)
            total = total + tf.cast(s[0], tf.int64) * tf.cast(s[1], tf.int64)
            checks = self._check_size(s[0], s[1], BYTES_INPUT, i)
            checks += self._check_request(total, BYTES_INPUT, i)
            with tf.control_dependencies(checks):
                img = tf.identity(img)
            return i + 1, total, images.write(i, img), heights.write(i, s[0]), widths.write(i, s[1])

        images = tf.TensorArray(tf.uint8, size=n, infer_shape=False, element_shape=[None, None, 3])
        heights = tf.TensorArray(tf.int32, size=n)
        widths = tf.TensorArray(tf.int32, size=n)
        _, _, images, heights, widths = tf.while_loop(
            lambda i, *_: i < n, decode, [tf.constant(0), tf.constant(0, tf.int64), images, heights, widths],
            parallel_iterations=1,
        )
        heights = tf.reshape(heights.stack(), [-1])
        widths = tf.reshape(widths.stack(), [-1])
        max_h = tf.reduce_max(tf.concat([heights, [0]], 0))
        max_w = tf.reduce_max(tf.concat([widths, [0]], 0))
        same_size = tf.logical_and(
            tf.greater(n, 0),
            tf.logical_and(tf.reduce_all(tf.equal(heights, max_h)), tf.reduce_all(tf.equal(widths, max_w))),
        )

        def batched():
            stacked = tf.reshape(images.stack(), [n, max_h, max_w, 3])
            return self._run_chunked(stacked)

        def one_by_one():
            def body(i, *arrays):
                out = self._run(images.read(i)[tf.newaxis])
                h, w = heights[i], widths[i]
                paddings = [[0, max_h - h], [0, max_w - w]]
                written = []
                for key, array in zip(self._output_keys(), arrays):
                    value = out[key][0]
                    extra = [[0, 0]] if key == "probabilities" else []
                    fill = CLASSES_FILL if key == "classes" else 0
                    value = tf.pad(value, paddings + extra, constant_values=tf.cast(fill, value.dtype))
                    written.append(array.write(i, value))
                return (i + 1, *written)

            arrays = [tf.TensorArray(self._output_dtype(key), size=n) for key in self._output_keys()]
            _, *arrays = tf.while_loop(lambda i, *_: i < n, body, [tf.constant(0), *arrays], parallel_iterations=1)
            result = {}
            for key, array in zip(self._output_keys(), arrays):
                shape = [n, max_h, max_w] + ([-1] if key == "probabilities" else [])
                if key == "probabilities" and self.num_classes is not None:
                    shape[-1] = self.num_classes
                result[key] = tf.reshape(array.stack(), shape)
            return result

        def empty():
            result = {"classes": tf.zeros([0, 0, 0], self.classes_dtype), "edge": tf.zeros([0, 0, 0], tf.float32)}
            if self.with_probabilities:
                result["probabilities"] = tf.zeros([0, 0, 0, self.num_classes or 0], tf.float32)
            return result

        result = tf.cond(tf.equal(n, 0), empty, lambda: tf.cond(same_size, batched, one_by_one))
        result["height"] = heights
        result["width"] = widths
        return result

    def _output_keys(self) -> list:
        return ["classes", "edge"] + (["probabilities"] if self.with_probabilities else [])

    def _output_dtype(self, key: str):
        return self.classes_dtype if key == "classes" else tf.float32

    # ------------------------------------------------------------------ metadata

    def metadata(self) -> dict:
        outputs = {
            "classes": f"{self.classes_dtype.name} (B,H,W) train ids; {CLASSES_FILL} outside an image's own "
            "height x width in a mixed-size batch",
            "edge": "float32 (B,H,W) boundary probability in [0,1]",
            "height": "int32 (B,) each image's own height",
            "width": "int32 (B,) each image's own width",
        }
        if self.with_probabilities:
            outputs["probabilities"] = "float32 (B,H,W,K) softmax class probabilities"
        return {
            "signatures": {
                DEFAULT_SIGNATURE: {"inputs": {BYTES_INPUT: "string (B,) encoded PNG/JPEG/GIF/BMP/WebP"}},
                IMAGE_TENSOR_SIGNATURE: {"inputs": {TENSOR_INPUT: "uint8 (B,H,W,3) RGB"}},
                "outputs": outputs,
            },
            "normalization": {"mean": list(self.mean), "std": list(self.std)},
            "pad_multiple": self.pad_multiple,
            "pad_mode": self.pad_mode,
            "max_pixels": self.max_pixels,
            "max_request_pixels": self.max_request_pixels,
            "chunk_pixels": self.chunk_pixels,
            "classes_fill_value": CLASSES_FILL,
        }


def build_serving_module(model, config: ExperimentConfig, with_probabilities: bool = False, pad_mode: str = "edge",
                         mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None,
                         max_pixels: int = 0, max_request_pixels: int = 0,
                         chunk_pixels: int = DEFAULT_CHUNK_PIXELS):
    """The serving module for ``model`` with the normalisation and stride of ``config``."""
    if mean is None or std is None:
        mean, std = normalization_for_config(config)
    return GSCNNServingModule(
        model,
        mean=mean,
        std=std,
        pad_multiple=pad_multiple_for(config),
        num_classes=int(config.model.num_classes),
        with_probabilities=with_probabilities,
        pad_mode=pad_mode,
        max_pixels=max_pixels,
        max_request_pixels=max_request_pixels,
        chunk_pixels=chunk_pixels,
    )


# ---------------------------------------------------------------------------- versions


def existing_versions(export_dir: str) -> list:
    """Sorted integer version directories under ``export_dir`` (what TF Serving would see)."""
    if not os.path.isdir(export_dir):
        return []
    return sorted(int(n) for n in os.listdir(export_dir)
                  if re.fullmatch(r"\d+", n) and os.path.isdir(os.path.join(export_dir, n)))


def next_version(export_dir: str) -> int:
    versions = existing_versions(export_dir)
    return versions[-1] + 1 if versions else 1


def find_saved_model(path: str, version: Optional[int] = None) -> str:
    """A SavedModel directory, or an export root -> its highest (or the given) complete version."""
    if version is None and os.path.isfile(os.path.join(path, "saved_model.pb")):
        return path
    complete = [v for v in existing_versions(path) if os.path.isfile(os.path.join(path, str(v), "saved_model.pb"))]
    if version is not None:
        if version not in complete:
            raise FileNotFoundError(f"{path}: no SavedModel version {version} (found {complete or 'none'})")
        return os.path.join(path, str(version))
    if not complete:
        raise FileNotFoundError(f"{path}: not a SavedModel (no saved_model.pb) nor an export dir with versions")
    return os.path.join(path, str(complete[-1]))


def is_saved_model_path(path: str) -> bool:
    """True for a SavedModel directory or an export root holding at least one complete version."""
    try:
        find_saved_model(path)
    except FileNotFoundError:
        return False
    return True


# ---------------------------------------------------------------------------- export


def export_saved_model(
    model,
    config: ExperimentConfig,
    export_dir: str,
    version: Optional[int] = None,
    overwrite: bool = False,
    with_probabilities: bool = False,
    pad_mode: str = "edge",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_request_pixels: int = DEFAULT_MAX_REQUEST_PIXELS,
    chunk_pixels: int = DEFAULT_CHUNK_PIXELS,
    warmup: bool = True,
    warmup_images: Optional[Sequence] = None,
    warmup_size: tuple = (256, 512),
    model_name: str = "gscnn",
    verify: bool = True,
    source: Optional[str] = None,
    mean: Optional[Sequence[float]] = None,
    std: Optional[Sequence[float]] = None,
) -> str:
    """Writes ``<export_dir>/<version>/`` atomically and returns its path.

    ``version`` defaults to the next integer. An existing version is an error unless
    ``overwrite``. ``warmup_images``: encoded image bytes (or file paths) for the warmup
    requests; synthetic images of ``warmup_size`` (H, W) otherwise. ``verify`` reloads the
    written SavedModel (before it is published) and checks that it reproduces the
    in-memory model's class map on the warmup images. ``max_pixels`` / ``max_request_pixels``
    (0 = no limit) bound the pixels per image / per request the server accepts;
    ``chunk_pixels`` bounds what the network sees per call. Non-finite weights are refused.
    Temporary directories of killed exports into ``export_dir`` are removed first.
    """
    from gscnn_tf.export import warmup as warmup_lib

    if version is not None and int(version) < 1:
        raise ExportError(f"version {version}: TF Serving needs a positive integer version")
    check_finite_weights(model, source or "the model")
    os.makedirs(export_dir, exist_ok=True)
    with _export_lock(export_dir) as exclusive:
        if exclusive:
            remove_stale_export_temps(export_dir)
        return _export_locked(model, config, export_dir, version, overwrite, with_probabilities, pad_mode, max_pixels,
                              max_request_pixels, chunk_pixels, warmup, warmup_images, warmup_size, model_name,
                              verify, source, mean, std)


def check_finite_weights(model, source: str) -> None:
    """Raises :class:`ExportError` naming ``source`` and the first weights holding NaN or Inf."""
    bad = non_finite_weights(model)
    if bad:
        names = ", ".join(bad[:3])
        raise ExportError(f"{source}: {len(bad)} of {len(model.weights)} weight tensors hold NaN or Inf ({names}"
                          f"{', ...' if len(bad) > 3 else ''}); the training diverged: export an earlier checkpoint "
                          "(e.g. the run's best weights) or retrain")


@contextlib.contextmanager
def _export_lock(export_dir: str):
    """``flock`` on the ``export_dir`` directory itself (no lock file among the versions): yields
    True when this export is the only one running (then leftovers of killed exports can be
    removed safely), False when another export holds it (both go ahead; nothing is removed)."""
    import fcntl

    fd = os.open(export_dir, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            exclusive = True
        except OSError:
            exclusive = False
        yield exclusive
    finally:
        os.close(fd)


def remove_stale_export_temps(export_dir: str) -> list:
    """Removes the hidden temporary directories that killed exports left in ``export_dir``.

    Only this tool's own names (``.<version>.<random>.tmp``, ``.<version>.<random>.tmp.old``,
    ``.gscnn_export_assets.<random>.tmp``); call while holding the export lock. Returns them.
    """
    removed = []
    for name in sorted(os.listdir(export_dir)):
        path = os.path.join(export_dir, name)
        if is_temporary_name(name) and os.path.isdir(path) and not os.path.islink(path):
            logger.warning("removing %s (left by an interrupted export)", path)
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def _export_locked(model, config, export_dir, version, overwrite, with_probabilities, pad_mode, max_pixels,
                   max_request_pixels, chunk_pixels, warmup, warmup_images, warmup_size, model_name, verify, source,
                   mean, std) -> str:
    from gscnn_tf.export import warmup as warmup_lib

    if version is None:
        version = next_version(export_dir)
    target = os.path.join(export_dir, str(int(version)))
    if os.path.exists(target) and not overwrite:
        raise FileExistsError(f"{target}: version {version} already exists (use --overwrite or another --version)")
    module = build_serving_module(model, config, with_probabilities=with_probabilities, pad_mode=pad_mode,
                                  mean=mean, std=std, max_pixels=max_pixels, max_request_pixels=max_request_pixels,
                                  chunk_pixels=chunk_pixels)
    samples = warmup_lib.load_or_make_samples(warmup_images, warmup_size)
    meta = module.metadata()
    meta.update(
        {
            "class_names": list(label_tables.CLASS_NAMES[: config.model.num_classes]),
            "class_colors": label_tables.CLASS_COLORS[: config.model.num_classes].tolist(),
            "ignore_label": label_tables.IGNORE_LABEL,
            "num_classes": int(config.model.num_classes),
            "model_name": model_name,
            "version": int(version),
            "source_checkpoint": source,
            "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "tensorflow_version": tf.__version__,
            "config": config_to_dict(config),
        }
    )
    # Next to the versions (not in /tmp) so that a killed export's leftovers are found and removed.
    with tempfile.TemporaryDirectory(prefix=".gscnn_export_assets.", suffix=".tmp", dir=export_dir) as assets_src:
        labels_path = os.path.join(assets_src, LABELS_ASSET)
        with open(labels_path, "w", encoding="utf-8") as f:
            json.dump(meta, f, indent=2)
        config_path = os.path.join(assets_src, CONFIG_ASSET)
        save_config(config, config_path)
        # Tracked assets are copied into <version>/assets/ and reachable after loading.
        module.labels_asset = tf.saved_model.Asset(labels_path)
        module.config_asset = tf.saved_model.Asset(config_path)
        signatures = {
            DEFAULT_SIGNATURE: module.serve_bytes.get_concrete_function(),
            IMAGE_TENSOR_SIGNATURE: module.serve_images.get_concrete_function(),
        }
        with atomic_directory(target, overwrite=overwrite) as tmp:
            logger.info("writing SavedModel to %s", target)
            tf.saved_model.save(module, tmp, signatures=signatures)
            if warmup:
                warmup_lib.write_warmup_requests(tmp, samples, model_name=model_name)
            if verify:
                _verify(tmp, module, samples)
    logger.info("exported %s", target)
    return target


def _verify(path: str, module: GSCNNServingModule, samples: list) -> None:
    """Reloads the SavedModel and compares its class maps with the in-memory module's."""
    loaded = tf.saved_model.load(path)
    serve = loaded.signatures[DEFAULT_SIGNATURE]
    for i, encoded in enumerate(samples):
        got = serve(**{BYTES_INPUT: tf.constant([encoded])})
        want = module.serve_bytes(tf.constant([encoded]))
        agree = float(np.mean(got["classes"].numpy() == want["classes"].numpy()))
        if agree < 0.999:
            raise ExportError(f"{path}: reloaded model disagrees with the in-memory model on warmup image {i} "
                              f"({agree:.4%} of pixels agree)")
    logger.info("verified the reloaded SavedModel on %d image(s)", len(samples))
