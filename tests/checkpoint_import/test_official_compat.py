"""``model.official_compat`` and the WideResNet-38 backbone, against independent NumPy/OpenCV.

The align-corners resize is checked against PyTorch's ``align_corners=True`` bilinear formula
written in NumPy, the wrapped Canny against ``cv2.Canny`` of the wrapped uint8 image, the
max-pool against a -inf padded NumPy pool; the same ops also run on the JAX backend.
"""
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import tiny_model_config

from gscnn_tf.backbones import build_backbone, normalization_for
from gscnn_tf.backbones.wider_resnet import SymmetricMaxPool2D
from gscnn_tf.layers.aspp import ShapeAwareASPP
from gscnn_tf.layers.canny import CannyEdges
from gscnn_tf.layers.decoder import DeepLabV3PlusDecoder
from gscnn_tf.layers.resize import resize_bilinear_align_corners
from gscnn_tf.layers.shape_stream import ShapeStream

cv2 = pytest.importorskip("cv2")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def np_resize_align_corners(x, out_h, out_w):
    """PyTorch F.interpolate(mode='bilinear', align_corners=True), NHWC, in float64."""

    def axis_weights(n_in, n_out):
        scale = (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
        src = np.arange(n_out) * scale
        i0 = np.minimum(np.floor(src).astype(int), n_in - 1)
        i1 = np.minimum(i0 + 1, n_in - 1)
        return i0, i1, src - i0

    h0, h1, fh = axis_weights(x.shape[1], out_h)
    w0, w1, fw = axis_weights(x.shape[2], out_w)
    x = x.astype(np.float64)
    rows = x[:, h0] * (1 - fh)[None, :, None, None] + x[:, h1] * fh[None, :, None, None]
    return rows[:, :, w0] * (1 - fw)[None, None, :, None] + rows[:, :, w1] * fw[None, None, :, None]


def np_max_pool_torch(x, k=3, s=2, p=1):
    """PyTorch MaxPool2d(k, s, p): -inf padding on every side, NHWC."""
    padded = np.pad(x, [(0, 0), (p, p), (p, p), (0, 0)], constant_values=-np.inf)
    out_h = (x.shape[1] + 2 * p - k) // s + 1
    out_w = (x.shape[2] + 2 * p - k) // s + 1
    out = np.empty((x.shape[0], out_h, out_w, x.shape[3]), x.dtype)
    for i in range(out_h):
        for j in range(out_w):
            out[:, i, j] = padded[:, i * s:i * s + k, j * s:j * s + k].max(axis=(1, 2))
    return out


def wrapped_canny_reference(x):
    """What the official code feeds cv2.Canny: the normalised float image cast to uint8 by NumPy."""
    return np.stack([cv2.Canny(np.mod(np.trunc(img), 256).astype(np.uint8), 10, 100) // 255 for img in x])


def rgb_scene(h, w, seed):
    """(1, h, w, 3) float32 RGB 0..255: flat colour regions, some dark enough to wrap once
    normalised (value < -1), plus noise."""
    rng = np.random.RandomState(seed)
    img = np.full((h, w, 3), 150.0)
    for _ in range(8):
        y, x = rng.randint(0, h - 4), rng.randint(0, w - 4)
        img[y:y + rng.randint(4, h // 2), x:x + rng.randint(4, w // 2)] = rng.uniform(0, 255, 3)
    return np.clip(np.rint(img + rng.normal(0, 8, img.shape)), 0, 255).astype(np.float32)[None]


def normalised_scene(h, w, seed, backbone="wrn38"):
    """:func:`rgb_scene` normalised for ``backbone``: what the official code's Canny reads."""
    mean, std = normalization_for(backbone)
    return ((rgb_scene(h, w, seed) - np.array(mean)) / np.array(std)).astype(np.float32)


# ----------------------------------------------------------------------------- align-corners resize


@pytest.mark.parametrize("out_hw", [(17, 33), (64, 128), (5, 3), (1, 7), (8, 16)])
def test_align_corners_resize_matches_the_pytorch_formula(out_hw):
    x = np.random.RandomState(0).normal(size=(2, 8, 16, 3)).astype(np.float32)
    got = keras.ops.convert_to_numpy(resize_bilinear_align_corners(x, out_hw))
    np.testing.assert_allclose(got, np_resize_align_corners(x, *out_hw), rtol=1e-5, atol=1e-5)
    # corners coincide with the input's corners (the point of align_corners)
    if min(out_hw) > 1:
        np.testing.assert_allclose(got[:, [0, -1]][:, :, [0, -1]], x[:, [0, -1]][:, :, [0, -1]], atol=1e-6)


def test_align_corners_resize_with_run_time_sizes():
    """Inside a tf.function with unknown spatial dims (model.fit, SavedModel signatures)."""
    spec = tf.TensorSpec([None, None, None, 2], tf.float32)

    @tf.function(input_signature=[spec, spec])
    def resize(x, reference):
        return resize_bilinear_align_corners(x, tf.shape(reference)[1:3])

    x = np.random.RandomState(1).normal(size=(1, 9, 17, 2)).astype(np.float32)
    got = resize(x, np.zeros((1, 75, 131, 2), np.float32)).numpy()
    np.testing.assert_allclose(got, np_resize_align_corners(x, 75, 131), rtol=1e-5, atol=1e-5)


def test_half_pixel_and_align_corners_differ():
    """The switch matters: the default half-pixel resize is a different function."""
    from gscnn_tf.layers.resize import resize_to

    x = np.random.RandomState(2).normal(size=(1, 8, 16, 1)).astype(np.float32)
    half = resize_to(x, (64, 128)).numpy()
    aligned = resize_to(x, (64, 128), align_corners=True).numpy()
    assert np.abs(half - aligned).max() > 0.05
    with pytest.raises(ValueError, match="bilinear"):
        resize_to(x, (4, 4), interpolation="nearest", align_corners=True)


# ----------------------------------------------------------------------------- wrapped Canny


@pytest.mark.parametrize("size", [(64, 128), (75, 131)])
def test_wrapped_canny_matches_cv2_on_the_wrapped_uint8_image(size):
    x = np.concatenate([normalised_scene(*size, seed=s) for s in (0, 1)])
    layer = CannyEdges(10, 100, input_mode="official_uint8_wrap")
    got = keras.ops.convert_to_numpy(layer(x))[..., 0]
    want = wrapped_canny_reference(x)
    assert want.sum() > 50  # the scene has wrapped contours
    np.testing.assert_array_equal(got, want)
    # the default mode (round and clip RGB) computes something else on the same input
    default = keras.ops.convert_to_numpy(CannyEdges(10, 100)(x))[..., 0]
    assert (default != want).sum() > 100


def test_wrap_semantics_truncate_then_modulo():
    """-2.1 -> 254, -1.5 -> 255, -0.5 -> 0, 2.6 -> 2 (NumPy's float->uint8 cast on x86)."""
    layer = CannyEdges(input_mode="official_uint8_wrap")
    values = np.array([[[[-2.1, -1.5, -0.5]], [[2.6, 0.0, 1.99]]]], np.float32)  # (1, 2, 1, 3)
    got = keras.ops.convert_to_numpy(layer._to_uint8_range(values))
    np.testing.assert_array_equal(got, np.mod(np.trunc(values), 256).astype(np.uint8))
    np.testing.assert_array_equal(got.ravel(), [254, 255, 0, 2, 0, 1])
    with pytest.raises(ValueError, match="input_mode"):
        CannyEdges(input_mode="wrap")


# ----------------------------------------------------------------------------- WRN-38 backbone


def test_symmetric_max_pool_matches_torch_semantics():
    x = -np.abs(np.random.RandomState(3).normal(size=(2, 9, 14, 4))).astype(np.float32) - 1.0  # all negative
    got = SymmetricMaxPool2D()(x).numpy()
    np.testing.assert_array_equal(got, np_max_pool_torch(x))
    # Keras' 'same' pooling differs (bottom/right padding only): the explicit layer is needed
    same = keras.layers.MaxPooling2D(3, 2, padding="same")(x).numpy()
    assert same.shape == got.shape and not np.array_equal(same, got)


@pytest.mark.parametrize("size", [(64, 128), (75, 131)])
def test_wrn38_taps_strides_and_channels(size):
    model = build_backbone("wrn38", 8, sync_batchnorm=False)
    out = model(np.zeros((1, *size, 3), np.float32), training=False)
    h, w = size
    ceil = lambda n, s: -(-n // s)  # noqa: E731  PyTorch's padded convs/pools round up
    expected = {"stem": (1, 64), "c2": (2, 128), "c3": (4, 256), "c4": (8, 512), "c5": (8, 4096)}
    for key, (stride, channels) in expected.items():
        assert tuple(out[key].shape) == (1, ceil(h, stride), ceil(w, stride), channels), key


def test_wrn38_parameters_and_layout():
    from gscnn_tf.backbones import wider_resnet

    model = build_backbone("wrn38", 8, sync_batchnorm=False)
    # Independent count from the architecture table: 3x3 convs, 1x1 projections, BN (4 per channel).
    params, bn, c_in = 3 * 3 * 3 * 64, 0, 64
    for module, (blocks, widths, _, _) in enumerate(wider_resnet.WRN38_MODULES, start=2):
        for b in range(blocks):
            bn += c_in
            if len(widths) == 2:
                params += 9 * c_in * widths[0] + 9 * widths[0] * widths[1]
                bn += widths[0]
            else:
                params += c_in * widths[0] + 9 * widths[0] * widths[1] + widths[1] * widths[2]
                bn += widths[0] + widths[1]
            if c_in != widths[-1] or (module == 4 and b == 0):
                params += c_in * widths[-1]
            c_in = widths[-1]
    trainable = sum(int(np.prod(v.shape)) for v in model.trainable_weights)
    assert trainable == params + 2 * bn == 105_062_720
    assert model.count_params() == params + 4 * bn
    assert not any(getattr(layer, "use_bias", False) for layer in model.layers)
    assert normalization_for("wrn38") == ((123.675, 116.28, 103.53), (58.395, 57.12, 57.375))


def test_wrn38_options():
    with pytest.raises(ValueError, match="output stride 8"):
        build_backbone("wrn38", 16)
    with pytest.raises(ValueError, match="import_official_checkpoint"):
        build_backbone("wrn38", 8, pretrained="imagenet")
    from gscnn_tf.backbones import load_pretrained

    model = build_backbone("wrn38", 8, sync_batchnorm=True)
    with pytest.raises(ValueError, match="import_official_checkpoint"):
        load_pretrained(model, "wrn38", "imagenet")
    assert all(layer.synchronized for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization))


# ----------------------------------------------------------------------------- switches in the model


def _small(compat):
    from gscnn_tf.model import GatedSCNN

    return GatedSCNN(tiny_model_config(num_classes=3, official_compat=compat, sync_batchnorm=False))


def test_official_compat_switches_in_the_model():
    default, compat = _small(False), _small(True)
    assert default.get_layer("canny").input_mode == "rgb"
    assert compat.get_layer("canny").input_mode == "official_uint8_wrap"
    assert compat.get_layer("shape_stream").align_corners and compat.get_layer("aspp").align_corners
    decoder = compat.get_layer("decoder")
    assert decoder.align_corners and not decoder.classifier_bias and decoder.classifier.bias is None
    assert isinstance(decoder.low_level, keras.layers.Conv2D) and not decoder.low_level.use_bias
    assert isinstance(compat.get_layer("aspp").project, keras.layers.Conv2D)
    assert not compat.get_layer("aspp").project.use_bias
    # compat drops the BN of project/low_level and the classifier bias: fewer weights
    assert compat.count_params() < default.count_params()
    x = rgb_scene(64, 64, 0)
    out = compat(x, training=False)
    assert out["seg_logits"].shape == (1, 64, 64, 3) and np.isfinite(out["seg_logits"].numpy()).all()
    # trainable: gradients reach the backbone through the align-corners resizes and plain projections
    with tf.GradientTape() as tape:
        out = compat(x, training=True)
        loss = tf.reduce_mean(out["seg_logits"] ** 2) + tf.reduce_mean(out["edge_logits"] ** 2)
    grads = tape.gradient(loss, compat.trainable_weights)
    bad = [w.path for w, g in zip(compat.trainable_weights, grads) if g is None or not np.isfinite(g.numpy()).all()]
    assert not bad, bad
    stream = compat.get_layer("shape_stream")
    position = [i for i, w in enumerate(compat.trainable_weights) if w is stream.gate_projections[0].kernel]
    assert float(tf.reduce_sum(tf.abs(grads[position[0]]))) > 0


@pytest.mark.parametrize(
    "layer",
    [
        ShapeStream(align_corners=True, sync_batchnorm=False),
        ShapeAwareASPP(filters=8, project_norm_act=False, align_corners=True),
        DeepLabV3PlusDecoder(num_classes=3, low_level_norm_act=False, classifier_bias=False, align_corners=True),
        CannyEdges(input_mode="official_uint8_wrap"),
        SymmetricMaxPool2D(pool_size=3, strides=2, padding=1),
    ],
    ids=lambda layer: type(layer).__name__,
)
def test_compat_options_round_trip_through_get_config(layer):
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert restored.get_config() == layer.get_config()
    for key in ("align_corners", "project_norm_act", "low_level_norm_act", "classifier_bias", "input_mode", "padding"):
        if key in layer.get_config():
            assert getattr(restored, key) == getattr(layer, key)


_JAX_SCRIPT = r"""
import os, sys
import numpy as np
import keras
assert keras.backend.backend() == "jax"
from gscnn_tf.backbones.wider_resnet import SymmetricMaxPool2D
from gscnn_tf.layers.canny import CannyEdges
from gscnn_tf.layers.resize import resize_bilinear_align_corners
from gscnn_tf.config import ModelConfig
from gscnn_tf.model import GatedSCNN
data = dict(np.load(sys.argv[1]))
out = {
    "resize": np.asarray(resize_bilinear_align_corners(data["x"], (75, 131))),
    "pool": np.asarray(SymmetricMaxPool2D()(data["x"])),
    "canny": np.asarray(CannyEdges(input_mode="official_uint8_wrap")(data["scene"]))[..., 0],
}
model = GatedSCNN(ModelConfig(backbone="mobilenetv2", mobilenet_alpha=0.35, num_classes=3, aspp_filters=16,
                                decoder_filters=16, low_level_filters=8, official_compat=True))
out["seg"] = np.asarray(model(data["rgb"], training=False)["seg_logits"])
assert "tensorflow" not in sys.modules, "TensorFlow imported on the JAX path"
np.savez(sys.argv[2], **out)
"""


@pytest.mark.slow
def test_compat_ops_on_the_jax_backend(tmp_path):
    pytest.importorskip("jax")
    x = np.random.RandomState(4).normal(size=(1, 9, 17, 3)).astype(np.float32)
    scene = normalised_scene(64, 64, 5)
    np.savez(tmp_path / "in.npz", x=x, scene=scene, rgb=rgb_scene(64, 64, 5))
    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
    proc = subprocess.run([sys.executable, "-c", _JAX_SCRIPT, str(tmp_path / "in.npz"), str(tmp_path / "out.npz")],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = np.load(tmp_path / "out.npz")
    np.testing.assert_allclose(out["resize"], np_resize_align_corners(x, 75, 131), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(out["pool"], np_max_pool_torch(x))
    np.testing.assert_array_equal(out["canny"], wrapped_canny_reference(scene))
    assert out["seg"].shape == (1, 64, 64, 3) and np.isfinite(out["seg"]).all()
