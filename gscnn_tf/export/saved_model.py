"""SavedModel export for TF Serving: in-graph decoding, padding and cropping around the model.

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
(:data:`DEFAULT_MAX_PIXELS`, :data:`DEFAULT_MAX_REQUEST_PIXELS`; figures in docs/SERVING.md). With
``tile_size``, images above ``max_pixels`` are not refused but run tile by tile (the network
sees one tile at a time; :mod:`gscnn_tf.export.serving_tiles`).

**Errors.** Bytes that are not an image raise ``InvalidArgumentError`` naming the element
(``image_bytes[i] is not a PNG, JPEG, GIF, BMP or WebP image ...``); a PNG without its IEND
chunk or a JPEG without an end-of-image marker (a truncated upload) is refused naming the
element; other corrupt data raises the decoder's ``InvalidArgumentError``. An empty
``serving_image_tensor`` batch is an ``InvalidArgumentError``. Requests are independent,
so the next one works.

Assets: ``assets/labels.json`` (class names, colours, ignore/fill values, input contract,
signatures) and ``assets/config.yaml`` (the ExperimentConfig used), and TF Serving warmup
requests in ``assets.extra/tf_serving_warmup_requests`` (see :mod:`gscnn_tf.export.warmup`).
"""
from __future__ import annotations

import datetime
import json
import logging
import os
import tempfile
from typing import Optional, Sequence

import numpy as np
import tensorflow as tf

from gscnn_tf.config import ExperimentConfig, config_to_dict, save_config
from gscnn_tf.deploy.tiles import DEFAULT_TILE_OVERLAP
from gscnn_tf.export import warmup as warmup_lib
from gscnn_tf.export.serving_graph import GSCNNServingModule, build_serving_module
from gscnn_tf.export.signatures import (
    BYTES_INPUT,
    CONFIG_ASSET,
    DEFAULT_SIGNATURE,
    IMAGE_TENSOR_SIGNATURE,
    LABELS_ASSET,
)
from gscnn_tf.export.versions import export_lock, next_version, remove_stale_export_temps
from gscnn_tf.training.checkpoints import non_finite_weights
from gscnn_tf.utils.atomic import atomic_directory
from gscnn_tf.utils.serving_limits import DEFAULT_CHUNK_PIXELS, DEFAULT_MAX_PIXELS, DEFAULT_MAX_REQUEST_PIXELS

logger = logging.getLogger(__name__)


class ExportError(RuntimeError):
    """The export could not be written or did not pass its self-check."""


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
    tile_size: Optional[Sequence[int]] = None,
    tile_overlap: int = DEFAULT_TILE_OVERLAP,
    warmup: bool = True,
    warmup_images: Optional[Sequence] = None,
    warmup_size: tuple = (256, 512),
    model_name: str = "gscnn",
    verify: bool = True,
    source: Optional[str] = None,
) -> str:
    """Writes ``<export_dir>/<version>/`` atomically and returns its path.

    ``version`` defaults to the next integer. An existing version is an error unless
    ``overwrite``. ``warmup_images``: encoded image bytes (or file paths) for the warmup
    requests; synthetic images of ``warmup_size`` (H, W) otherwise. ``verify`` reloads the
    written SavedModel (before it is published) and checks that it reproduces the
    in-memory model's class map on the warmup images. ``max_pixels`` / ``max_request_pixels``
    (0 = no limit) bound the pixels per image / per request the server accepts;
    ``chunk_pixels`` bounds what the network sees per call; with ``tile_size`` (th, tw) images
    above ``max_pixels`` are served tile by tile (``tile_overlap`` pixels blended) instead of
    refused (:mod:`gscnn_tf.export.serving_tiles`). Non-finite weights are refused.
    Temporary directories of killed exports into ``export_dir`` are removed first.
    """
    if version is not None and int(version) < 1:
        raise ExportError(f"version {version}: TF Serving needs a positive integer version")
    check_finite_weights(model, source or "the model")
    os.makedirs(export_dir, exist_ok=True)
    with export_lock(export_dir) as exclusive:
        if exclusive:
            remove_stale_export_temps(export_dir)
        return _export_locked(model, config, export_dir, version, overwrite, with_probabilities, pad_mode, max_pixels,
                              max_request_pixels, chunk_pixels, tile_size, tile_overlap, warmup, warmup_images,
                              warmup_size, model_name, verify, source)


def check_finite_weights(model, source: str) -> None:
    """Raises :class:`ExportError` naming ``source`` and the first weights holding NaN or Inf."""
    bad = non_finite_weights(model)
    if bad:
        names = ", ".join(bad[:3])
        raise ExportError(f"{source}: {len(bad)} of {len(model.weights)} weight tensors hold NaN or Inf ({names}"
                          f"{', ...' if len(bad) > 3 else ''}); the training diverged: export an earlier checkpoint "
                          "(e.g. the run's best weights) or retrain")


def _export_locked(model, config, export_dir, version, overwrite, with_probabilities, pad_mode, max_pixels,
                   max_request_pixels, chunk_pixels, tile_size, tile_overlap, warmup, warmup_images, warmup_size,
                   model_name, verify, source) -> str:
    if version is None:
        version = next_version(export_dir)
    target = os.path.join(export_dir, str(int(version)))
    if os.path.exists(target) and not overwrite:
        raise FileExistsError(f"{target}: version {version} already exists (use --overwrite or another --version)")
    module = build_serving_module(model, config, with_probabilities=with_probabilities, pad_mode=pad_mode,
                                  max_pixels=max_pixels, max_request_pixels=max_request_pixels,
                                  chunk_pixels=chunk_pixels, tile_size=tile_size, tile_overlap=tile_overlap)
    samples = warmup_lib.load_or_make_samples(warmup_images, warmup_size)
    meta = module.metadata()
    meta.update(
        {
            "dataset_name": config.dataset.name,
            "class_names": list(config.dataset.class_names),
            "class_colors": [list(c) for c in config.dataset.class_colors],
            "ignore_label": int(config.dataset.ignore_label),
            "source_ids": {str(t): int(s) for t, s in enumerate(config.dataset.source_id_lut()[: len(
                config.dataset.class_names)])},
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
            # Serving never differentiates: leaving out the custom gradients (the native dilated
            # convolution's) saves tracing them, about 5 s per export.
            tf.saved_model.save(module, tmp, signatures=signatures,
                                options=tf.saved_model.SaveOptions(experimental_custom_gradients=False))
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
