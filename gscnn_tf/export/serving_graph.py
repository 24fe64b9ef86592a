"""The serving graph: a ``tf.Module`` around a :class:`gscnn_tf.model.GatedSCNN`.

Decoding (with the checks of :mod:`gscnn_tf.export.image_headers`), padding to the
model's stride (the model normalises the RGB pixels itself), chunked or per-image runs (tiled
above the pixel limit when the export enables tiles: :mod:`gscnn_tf.export.serving_tiles`) and
cropping back; see
:mod:`gscnn_tf.export.saved_model` for the contract it serves.
"""
from __future__ import annotations

from typing import Optional, Sequence

import tensorflow as tf

from gscnn_tf.config import ExperimentConfig
from gscnn_tf.data.augment import pad_rgb
from gscnn_tf.deploy.tiles import DEFAULT_TILE_OVERLAP
from gscnn_tf.export.image_headers import check_complete, check_recognised, declared_size
from gscnn_tf.export.serving_tiles import run_tiled_image
from gscnn_tf.export.signatures import (
    BYTES_INPUT,
    CLASSES_FILL,
    DEFAULT_SIGNATURE,
    IMAGE_TENSOR_SIGNATURE,
    PAD_MODES,
    TENSOR_INPUT,
)
from gscnn_tf.utils.serving_limits import DEFAULT_CHUNK_PIXELS


def pad_multiple_for(config: ExperimentConfig) -> int:
    """Input sizes the model accepts: multiples of 8 at output stride 8, of 16 at 16."""
    return 16 if int(config.model.output_stride) == 16 else 8


class _Holder:
    """Keeps the Keras model out of tf.Module's object tracking (only its variables are saved)."""

    def __init__(self, model):
        self.model = model


class GSCNNServingModule(tf.Module):
    """The serving graph around a :class:`gscnn_tf.model.GatedSCNN` (RGB 0..255 -> {seg_logits, edge}).

    Used for the export and, in memory, by :mod:`gscnn_tf.prediction.files` for checkpoints, so a
    checkpoint and its SavedModel go through the same preprocessing code.
    """

    def __init__(
        self,
        model,
        pad_multiple: int = 8,
        num_classes: Optional[int] = None,
        with_probabilities: bool = False,
        pad_mode: str = "edge",
        max_pixels: int = 0,
        max_request_pixels: int = 0,
        chunk_pixels: int = DEFAULT_CHUNK_PIXELS,
        tile_size: Optional[Sequence[int]] = None,
        tile_overlap: int = DEFAULT_TILE_OVERLAP,
        name: str = "gscnn_serving",
    ):
        super().__init__(name=name)
        if pad_mode not in PAD_MODES:
            raise ValueError(f"pad_mode {pad_mode!r}: expected one of {PAD_MODES}")
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
        # With tiles, images above max_pixels are served tile by tile instead of refused.
        self.tile_size = None if not tile_size else tuple(int(v) for v in tile_size)
        self.tile_overlap = int(tile_overlap)
        if self.tile_size is not None:
            if len(self.tile_size) != 2 or min(self.tile_size) < 1 or any(v % self.pad_multiple for v in self.tile_size):
                raise ValueError(f"tile size {list(tile_size)}: [height, width], positive multiples of "
                                 f"{self.pad_multiple} (the model's stride)")
            if not 0 <= self.tile_overlap < min(self.tile_size):
                raise ValueError(f"tile overlap {tile_overlap}: must be in [0, {min(self.tile_size)})")
            if self.max_pixels <= 0 or self.num_classes is None:
                raise ValueError("tiled serving tiles the images above max_pixels: set max_pixels > 0 (and the "
                                 "model's class count)")
        # "mean" padding: the backbone's mean colour, which is 0 once the model normalises.
        self.pad_color = tuple(float(v) for v in getattr(model, "pixel_mean", None) or ())
        if pad_mode == "mean" and len(self.pad_color) != 3:
            raise ValueError("pad_mode 'mean' needs a model with a pixel_mean (a GatedSCNN knows its backbone's)")
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

    def _pad(self, images: tf.Tensor, min_size=(0, 0), multiple: Optional[int] = None) -> tf.Tensor:
        """uint8 (B,h,w,3) -> float32 RGB 0..255 (B,hp,wp,3), hp/wp the next multiples of ``multiple``
        (default the model's stride), at least ``min_size``."""
        shape = tf.shape(images)
        h, w = shape[1], shape[2]
        m = self.pad_multiple if multiple is None else multiple
        hp = tf.maximum((h + m - 1) // m * m, min_size[0])
        wp = tf.maximum((w + m - 1) // m * m, min_size[1])
        x = tf.cast(images, tf.float32)
        if self.pad_mode == "edge":
            # Replicate the border rows/columns: gather with clamped indices works for any amount.
            x = tf.gather(x, tf.minimum(tf.range(hp), h - 1), axis=1)
            return tf.gather(x, tf.minimum(tf.range(wp), w - 1), axis=2)
        return pad_rgb(x, [[0, hp - h], [0, wp - w]], self.pad_color)

    def _forward(self, x):
        out = self.model(x, training=False)
        return {"seg_logits": tf.cast(out["seg_logits"], tf.float32), "edge": tf.cast(out["edge"], tf.float32)}

    def _run(self, images: tf.Tensor) -> dict:
        """uint8 (B,h,w,3), one size -> outputs cropped to (B,h,w); tiled above ``max_pixels`` when tiling."""
        if self.tile_size is None:
            return self._run_whole(images)
        shape = tf.shape(images, out_type=tf.int64)
        return tf.cond(shape[1] * shape[2] > self.max_pixels, lambda: self._run_tiled(images),
                       lambda: self._run_whole(images))

    def _run_tiled(self, images: tf.Tensor) -> dict:
        """Like :meth:`_run_whole`, each image tile by tile (:mod:`gscnn_tf.export.serving_tiles`)."""
        shape = tf.shape(images)
        h, w = shape[1], shape[2]

        def one(image):
            x = self._pad(image[tf.newaxis], self.tile_size, multiple=1)  # tiles have the stride's multiples
            out = run_tiled_image(self.forward, x, self.tile_size, self.tile_overlap, self.num_classes,
                                  self.with_probabilities, self.classes_dtype)
            return {key: value[:h, :w] for key, value in out.items()}

        signature = {key: tf.TensorSpec([None, None] + ([self.num_classes] if key == "probabilities" else []),
                                        self._output_dtype(key)) for key in self._output_keys()}
        # One image after the other: the network's memory is one tile's, whatever the batch.
        return tf.map_fn(one, images, fn_output_signature=signature, parallel_iterations=1)

    def _run_whole(self, images: tf.Tensor) -> dict:
        """uint8 (B,h,w,3), one size -> outputs cropped to (B,h,w), the network on whole images."""
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
    def _check_size(self, height, width, what: str, index=None) -> list:
        """Control dependencies that reject images above ``max_pixels`` (protects the server's memory).

        ``what`` names the input; with ``index`` it is followed by ``[index]``.
        """
        if self.max_pixels <= 0 or self.tile_size is not None:  # with tiles, large images are tiled
            return []
        where = [] if index is None else [index]
        message = tf.strings.format(
            what + ("[{}]" if where else "") + " is {}x{} pixels, more than this export's limit of {} pixels",
            where + [height, width, tf.constant(self.max_pixels, tf.int64)],
        )
        too_big = tf.cast(height, tf.int64) * tf.cast(width, tf.int64) > self.max_pixels
        return [tf.debugging.Assert(tf.logical_not(too_big), [message])]
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
    def _serve_bytes(self, image_bytes):
        image_bytes = tf.reshape(image_bytes, [-1])
        n = tf.shape(image_bytes)[0]
        checks = tf.cond(tf.equal(n, 0), lambda: tf.constant(True), lambda: check_recognised(image_bytes))
        with tf.control_dependencies([checks]):
            n = tf.identity(n)

        def decode(i, total, images, heights, widths):
            data = image_bytes[i]
            if self.max_pixels > 0 or self.max_request_pixels > 0:  # refuse what the header declares first
                declared_h, declared_w = declared_size(data)
                checks = self._check_size(declared_h, declared_w, BYTES_INPUT, i)
                declared = tf.maximum(declared_h, 0) * tf.maximum(declared_w, 0)
                checks += self._check_request(total + declared, BYTES_INPUT, i)
                with tf.control_dependencies(checks):
                    data = tf.identity(data)
            with tf.control_dependencies(check_complete(data, i)):
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
            "input": "RGB 0..255; the model normalises it for its backbone",
            "pad_multiple": self.pad_multiple,
            "pad_mode": self.pad_mode,
            "max_pixels": self.max_pixels,
            "max_request_pixels": self.max_request_pixels,
            "chunk_pixels": self.chunk_pixels,
            "tile_size": list(self.tile_size) if self.tile_size else None,
            "tile_overlap": self.tile_overlap if self.tile_size else None,
            "classes_fill_value": CLASSES_FILL,
        }


def build_serving_module(model, config: ExperimentConfig, with_probabilities: bool = False, pad_mode: str = "edge",
                         max_pixels: int = 0, max_request_pixels: int = 0,
                         chunk_pixels: int = DEFAULT_CHUNK_PIXELS, tile_size: Optional[Sequence[int]] = None,
                         tile_overlap: int = DEFAULT_TILE_OVERLAP):
    """The serving module for ``model`` with the stride and class count of ``config``."""
    return GSCNNServingModule(
        model,
        pad_multiple=pad_multiple_for(config),
        num_classes=int(config.model.num_classes),
        with_probabilities=with_probabilities,
        pad_mode=pad_mode,
        max_pixels=max_pixels,
        max_request_pixels=max_request_pixels,
        chunk_pixels=chunk_pixels,
        tile_size=tile_size,
        tile_overlap=tile_overlap,
    )
