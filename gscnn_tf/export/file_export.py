"""LiteRT (``.tflite``) and ONNX exports for phones, edge boxes and ONNX Runtime.

Keras converts (``model.export(format="litert" | "onnx")``: TensorFlow's LiteRT converter and
tf2onnx); this module wraps the model for deployment, picks the converter settings, and
checks the written file against the Keras model before publishing it.

**The exported graph** (:func:`build_deploy_model`): input ``image`` uint8 (1, H, W, 3) RGB at
a size fixed at export (the model normalises in-graph); outputs ``classes`` uint8 (1, H, W)
train ids and, unless ``with_edges=False``, ``edge`` float32 (1, H, W) boundary probability.
The in-graph Canny traces its portable form (:func:`gscnn_tf.layers.canny.portable_canny`), so
the LiteRT file needs only builtin ops (no TensorFlow Flex delegate): conversion is asked for
builtins alone and fails loudly rather than pulling in Flex ops.

**LiteRT variants** (``quantization``): ``float32``; ``float16`` (weights stored in float16);
``dynamic`` (int8 weights, float activations); ``int8`` (weights and activations int8,
calibrated on ``representative`` images; ops without an int8 kernel stay float). ONNX is
float32.

**Self-check**: the file is run in its runtime (:mod:`gscnn_tf.deploy.runtime`) on the check
images and its class maps are compared with the Keras model's; the agreement is written to
the sidecar ``<file>.json``, and a float32 file below 99.9 % or a float16 file below 99.5 %
agreement is not published (:class:`ExportError`). Quantized int8 maps are judged by mIoU on a
held-out split instead (``bench/bench_deploy.py``).
"""
from __future__ import annotations

import datetime
import json
import logging
import os
from typing import Iterable, Optional, Sequence

import keras
import numpy as np
import tensorflow as tf

from gscnn_tf.config import ExperimentConfig, config_to_dict
from gscnn_tf.deploy.runtime import load_model_file, sidecar_path
from gscnn_tf.export.saved_model import ExportError
from gscnn_tf.export.serving_graph import pad_multiple_for
from gscnn_tf.layers.canny import portable_canny
from gscnn_tf.utils.atomic import atomic_path, atomic_write_text

logger = logging.getLogger(__name__)

FILE_FORMATS = ("litert", "onnx")
QUANTIZATIONS = ("float32", "float16", "dynamic", "int8")
SUFFIX = {"litert": ".tflite", "onnx": ".onnx"}
# Minimum share of pixels whose class agrees with the Keras model, per variant (None: not checked).
MIN_AGREEMENT = {"float32": 0.999, "float16": 0.995, "dynamic": None, "int8": None}


class DeployHead(keras.layers.Layer):
    """The network's outputs -> what a deployed file returns: ``classes`` uint8 (arg-max of
    ``seg_logits``) and optionally ``edge`` (B, H, W). TensorFlow ops (export code): Keras'
    own ``ops.argmax`` adds a bitcast/BitwiseAnd NaN guard that LiteRT has no builtin for."""

    def __init__(self, with_edges: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.with_edges = bool(with_edges)

    def call(self, outputs):
        classes = tf.argmax(outputs["seg_logits"], axis=-1, output_type=tf.int32)
        result = {"classes": tf.cast(classes, tf.uint8)}
        if self.with_edges:
            result["edge"] = outputs["edge"][..., 0]
        return result

    def get_config(self):
        return {**super().get_config(), "with_edges": self.with_edges}


def build_deploy_model(model, image_size: Sequence[int], with_edges: bool = True) -> keras.Model:
    """``model`` (a GatedSCNN or any model with ``seg_logits``/``edge`` outputs on 0..255 RGB)
    behind a fixed-size uint8 input and :class:`DeployHead`."""
    height, width = (int(v) for v in image_size)
    image = keras.Input((height, width, 3), batch_size=1, dtype="uint8", name="image")
    outputs = model(keras.ops.cast(image, "float32"), training=False)
    return keras.Model(image, DeployHead(with_edges, name="deploy_head")(outputs), name="gscnn_deploy")


def fit_to_size(image: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """An (h, w, 3) image as an (H, W, 3) one: border pixels repeated where it is smaller, the
    central H x W window where it is larger (a tile such as the deployed runner feeds)."""
    height, width = (int(v) for v in size)
    image = np.pad(image, [(0, max(0, height - image.shape[0])), (0, max(0, width - image.shape[1])), (0, 0)],
                   mode="edge")
    top, left = (image.shape[0] - height) // 2, (image.shape[1] - width) // 2
    return np.ascontiguousarray(image[top:top + height, left:left + width])


def representative_images(pattern: str, count: int, size: Sequence[int]) -> list:
    """The first ``count`` images of the TFRecord shards matching ``pattern`` (file order),
    each :func:`fit_to_size` to ``size``: uint8 (H, W, 3) arrays."""
    from gscnn_tf.data.tfexample import decode_example, parse_example

    files = sorted(tf.io.gfile.glob(pattern))
    if not files:
        raise ExportError(f"--representative-shards {pattern}: no TFRecord shard matches")
    images = []
    for record in tf.data.TFRecordDataset(files).take(count):
        image = decode_example(parse_example(record))[0]
        images.append(fit_to_size(np.asarray(image, np.uint8), size))
    if len(images) < count:
        logger.warning("%s: only %d images for the %d requested", pattern, len(images), count)
    return images


def synthetic_check_images(size: Sequence[int], count: int = 2, seed: int = 0) -> list:
    """Smooth random colour fields (not white noise: a class map of noise is all ties)."""
    rng = np.random.default_rng(seed)
    height, width = (int(v) for v in size)
    out = []
    for _ in range(count):
        coarse = rng.integers(0, 256, (max(2, height // 16), max(2, width // 16), 3)).astype(np.float32)
        image = tf.image.resize(coarse[None], (height, width), method="bilinear")[0].numpy()
        out.append(np.clip(np.rint(image), 0, 255).astype(np.uint8))
    return out


def _litert_settings(quantization: str, representative: Optional[list]) -> dict:
    builtins = tf.lite.OpsSet.TFLITE_BUILTINS
    if quantization == "float32":
        return {"target_spec": {"supported_ops": [builtins]}}
    if quantization == "float16":
        return {"optimizations": [tf.lite.Optimize.DEFAULT],
                "target_spec": {"supported_ops": [builtins], "supported_types": [tf.float16]}}
    if quantization == "dynamic":
        return {"optimizations": [tf.lite.Optimize.DEFAULT], "target_spec": {"supported_ops": [builtins]}}
    if not representative:
        raise ExportError("int8 quantization needs representative images (--representative-shards)")

    def dataset():
        for image in representative:
            yield [image[None]]

    # Int8 kernels where they exist; the Canny's int32 arithmetic and a few ops keep theirs.
    return {"optimizations": [tf.lite.Optimize.DEFAULT], "representative_dataset": dataset,
            "target_spec": {"supported_ops": [tf.lite.OpsSet.TFLITE_BUILTINS_INT8, builtins]}}


def default_file_name(fmt: str, image_size: Sequence[int], quantization: str = "float32") -> str:
    """``gscnn_<H>x<W>_<quantization>.tflite`` / ``.onnx``."""
    return f"gscnn_{int(image_size[0])}x{int(image_size[1])}_{quantization}{SUFFIX[fmt]}"


def class_agreement(deployed, reference: keras.Model, images: Iterable[np.ndarray]) -> float:
    """Share of pixels where the file's class map equals the Keras deploy model's."""
    same = total = 0
    for image in images:
        want = np.asarray(reference(image[None], training=False)["classes"])
        got = deployed.run(image[None])["classes"]
        same += int((got == want).sum())
        total += want.size
    return same / max(total, 1)


def export_model_file(
    model,
    config: ExperimentConfig,
    path: str,
    fmt: str,
    image_size: Sequence[int],
    quantization: str = "float32",
    representative: Optional[list] = None,
    check_images: Optional[list] = None,
    with_edges: bool = True,
    overwrite: bool = False,
    source: str = "",
) -> dict:
    """Writes ``path`` (``.tflite`` or ``.onnx``) and its sidecar ``path + ".json"``; returns the
    sidecar dict. Nothing is published unless conversion and the self-check succeed."""
    if fmt not in FILE_FORMATS:
        raise ExportError(f"format {fmt!r}: expected one of {FILE_FORMATS}")
    if quantization not in QUANTIZATIONS:
        raise ExportError(f"quantization {quantization!r}: expected one of {QUANTIZATIONS}")
    if fmt == "onnx" and quantization != "float32":
        raise ExportError("ONNX exports are float32; quantized variants are LiteRT only")
    if not path.endswith(SUFFIX[fmt]):
        raise ExportError(f"{path}: a {fmt} export must end with {SUFFIX[fmt]}")
    multiple = pad_multiple_for(config)
    if any(int(v) < multiple or int(v) % multiple for v in image_size):
        raise ExportError(f"image size {image_size[0]}x{image_size[1]}: height and width must be multiples of "
                          f"{multiple} (the model's stride); e.g. 360x480, 512x1024")
    for target in (path, sidecar_path(path)):
        if os.path.exists(target) and not overwrite:
            raise ExportError(f"{target}: exists (use --overwrite to replace it)")
    if int(config.model.num_classes) > 255:
        raise ExportError("the deployed class map is uint8: at most 255 classes")

    deploy = build_deploy_model(model, image_size, with_edges)
    deploy(check_images[0][None] if check_images else np.zeros((1, *image_size, 3), np.uint8))  # ONNX export wants a called model
    check_images = check_images or representative or synthetic_check_images(image_size)
    started = datetime.datetime.now()
    with atomic_path(path, suffix=SUFFIX[fmt]) as tmp:
        with portable_canny(deploy):
            try:
                if fmt == "litert":
                    deploy.export(tmp, format="litert", verbose=False,
                                  **_litert_settings(quantization, representative))
                else:
                    deploy.export(tmp, format="onnx", verbose=False)
            except ExportError:
                raise
            except Exception as exc:  # the converters raise many types; name the step
                raise ExportError(f"{fmt} conversion failed: {str(exc).strip().splitlines()[-1][:500]}") from exc
        metadata = {
            "format": fmt,
            "quantization": quantization,
            "image_size": [int(v) for v in image_size],
            "input": {"name": "image", "dtype": "uint8", "shape": [1, int(image_size[0]), int(image_size[1]), 3]},
            "outputs": ["classes"] + (["edge"] if with_edges else []),
            "dataset": config_to_dict(config)["dataset"],
            "model": config_to_dict(config)["model"],
            "source": source,
            "exported_at": started.isoformat(timespec="seconds"),
        }
        with open(sidecar_path(tmp), "w", encoding="utf-8") as f:
            json.dump(metadata, f)
        try:
            deployed = load_model_file(tmp, num_threads=2)
            agreement = class_agreement(deployed, deploy, check_images)
        finally:
            os.remove(sidecar_path(tmp))
        threshold = MIN_AGREEMENT[quantization]
        metadata["self_check"] = {"images": len(check_images), "class_agreement": agreement,
                                  "min_class_agreement": threshold}
        logger.info("%s %s: %.4f %% of pixels agree with the Keras model on %d image(s)", fmt, quantization,
                    100 * agreement, len(check_images))
        if threshold is not None and agreement < threshold:
            raise ExportError(f"{fmt} {quantization}: only {100 * agreement:.3f} % of pixels agree with the Keras "
                              f"model (needs {100 * threshold:.1f} %); the file was not written")
        metadata["file_bytes"] = os.path.getsize(tmp)
        atomic_write_text(sidecar_path(path), json.dumps(metadata, indent=1) + "\n")
    return metadata
