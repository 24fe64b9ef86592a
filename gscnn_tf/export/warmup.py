"""TF Serving warmup requests: ``assets.extra/tf_serving_warmup_requests``.

TF Serving replays these ``PredictionLog`` records (a TFRecord file) when it loads a
version, before the version serves traffic, so the first real request does not pay for
graph optimisation / kernel autotuning. The records use the export's own signatures:

1. one ``serving_default`` request per sample image (``image_bytes``: one encoded image);
2. one ``serving_default`` request with all samples as a batch (mixed sizes when the
   samples differ in size, which exercises the per-image path);
3. one ``serving_image_tensor`` request (``images``: the first sample as uint8 (1,H,W,3)).

Sample images are the user's (``--warmup-images``), otherwise synthetic street-like
scenes of ``warmup_size``: a PNG, a JPEG and an odd-sized grayscale PNG.
"""
from __future__ import annotations

import os
from typing import Optional, Sequence

import numpy as np
import tensorflow as tf

from gscnn_tf.export.signatures import BYTES_INPUT, DEFAULT_SIGNATURE, IMAGE_TENSOR_SIGNATURE, TENSOR_INPUT

WARMUP_DIR = "assets.extra"
WARMUP_FILE = "tf_serving_warmup_requests"


def synthetic_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A deterministic (H, W, 3) uint8 street-like scene: sky, buildings, road, a few boxes."""
    rng = np.random.default_rng(seed)
    img = np.zeros((height, width, 3), np.uint8)
    horizon = max(1, height // 2)
    ramp = np.linspace(0, 1, horizon)[:, None]
    img[:horizon] = (np.array([70, 130, 180]) * (1 - 0.3 * ramp))[:, None, :].astype(np.uint8)
    img[horizon:] = (128, 64, 128)
    for _ in range(max(2, width // 32)):
        x0 = int(rng.integers(0, max(1, width - 4)))
        bw = int(rng.integers(4, max(5, width // 4)))
        top = int(rng.integers(0, horizon))
        img[top:horizon, x0:x0 + bw] = rng.integers(40, 200, size=3)
    for _ in range(max(1, width // 64)):
        x0 = int(rng.integers(0, max(1, width - 4)))
        y0 = int(rng.integers(horizon, max(horizon + 1, height - 2)))
        img[y0:y0 + max(2, height // 10), x0:x0 + max(3, width // 12)] = (0, 0, 142)
    noise = rng.integers(-8, 9, size=img.shape)
    return np.clip(img.astype(np.int16) + noise, 0, 255).astype(np.uint8)


def encode(image: np.ndarray, fmt: str = "png") -> bytes:
    """(H, W, 3) or (H, W, 1) uint8 -> PNG / JPEG bytes (TensorFlow's encoders)."""
    image = np.asarray(image, np.uint8)
    if image.ndim == 2:
        image = image[..., None]
    if fmt == "png":
        return tf.io.encode_png(image).numpy()
    if fmt in ("jpg", "jpeg"):
        return tf.io.encode_jpeg(image, quality=95).numpy()
    raise ValueError(f"unknown image format {fmt!r}")


def load_or_make_samples(images: Optional[Sequence] = None, size: tuple = (256, 512)) -> list:
    """Encoded sample images: the given bytes / file paths, or three synthetic ones."""
    if images:
        samples = []
        for item in images:
            name = "warmup image" if isinstance(item, (bytes, bytearray)) else str(item)
            if isinstance(item, (bytes, bytearray)):
                data = bytes(item)
            else:
                try:
                    with open(item, "rb") as f:
                        data = f.read()
                except OSError as exc:
                    raise ValueError(f"{item}: cannot read warmup image ({exc.strerror or exc})") from exc
            try:
                tf.io.decode_image(data, channels=3, expand_animations=False)
            except (tf.errors.InvalidArgumentError, tf.errors.UnknownError) as exc:
                raise ValueError(f"{name}: not a readable image ({exc.message.splitlines()[0]})") from exc
            samples.append(data)
        return samples
    h, w = int(size[0]), int(size[1])
    if h < 1 or w < 1:
        raise ValueError(f"warmup size {size}: height and width must be positive")
    rgb = synthetic_image(h, w, seed=0)
    odd = synthetic_image(max(1, h - 5), max(1, w - 3), seed=1)
    gray = np.round(odd @ np.array([0.299, 0.587, 0.114])).astype(np.uint8)
    return [encode(rgb, "png"), encode(synthetic_image(h, w, seed=2), "jpeg"), encode(gray, "png")]


def build_warmup_logs(samples: Sequence[bytes], model_name: str = "gscnn") -> list:
    """The PredictionLog records for ``samples`` (see the module docstring)."""
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

    def log(signature: str, key: str, proto) -> "prediction_log_pb2.PredictionLog":
        request = predict_pb2.PredictRequest(
            model_spec=model_pb2.ModelSpec(name=model_name, signature_name=signature)
        )
        request.inputs[key].CopyFrom(proto)
        return prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))

    logs = [log(DEFAULT_SIGNATURE, BYTES_INPUT, tf.make_tensor_proto([s], dtype=tf.string)) for s in samples]
    if len(samples) > 1:
        logs.append(log(DEFAULT_SIGNATURE, BYTES_INPUT, tf.make_tensor_proto(list(samples), dtype=tf.string)))
    if samples:
        first = tf.io.decode_image(samples[0], channels=3, expand_animations=False).numpy()
        logs.append(log(IMAGE_TENSOR_SIGNATURE, TENSOR_INPUT, tf.make_tensor_proto(first[None], dtype=tf.uint8)))
    return logs


def write_warmup_requests(saved_model_dir: str, samples: Sequence[bytes], model_name: str = "gscnn") -> str:
    """Writes ``<saved_model_dir>/assets.extra/tf_serving_warmup_requests``; returns its path.

    Called on the export's temporary directory, which becomes the version only when complete.
    """
    directory = os.path.join(saved_model_dir, WARMUP_DIR)
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, WARMUP_FILE)
    with tf.io.TFRecordWriter(path) as writer:
        for record in build_warmup_logs(samples, model_name):
            writer.write(record.SerializeToString())
    return path


def read_warmup_requests(saved_model_dir: str) -> list:
    """The PredictionLog records of an export (for inspection and tests)."""
    from tensorflow_serving.apis import prediction_log_pb2

    path = os.path.join(saved_model_dir, WARMUP_DIR, WARMUP_FILE)
    logs = []
    for raw in tf.data.TFRecordDataset(path):
        record = prediction_log_pb2.PredictionLog()
        record.ParseFromString(raw.numpy())
        logs.append(record)
    return logs
