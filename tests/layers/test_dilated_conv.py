"""DilatedConv2D / DilatedDepthwiseConv2D: TensorFlow's native dilated kernels, same numbers.

Checked against a NumPy dilated convolution (independent), against the Keras layers they
replace (outputs and gradients, every dilation rate the package uses, odd sizes, 'same' and
'valid' padding, strides, mixed precision), and for checkpoint compatibility with models
built from the plain Keras layers. A graph check proves the native path is really taken
(no ``SpaceToBatchND``), so the equality tests cannot pass on the old path by accident.
"""
from unittest import mock

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import tiny_model_config

from gscnn_tf.layers.dilated_conv import Conv2D as DilatedConv2D
from gscnn_tf.layers.dilated_conv import DepthwiseConv2D as DilatedDepthwiseConv2D
from gscnn_tf.layers.dilated_conv import native_dilated_conv_enabled, set_native_dilated_conv

RATES = (2, 4, 12, 24, 36)  # ResNet c4/c5 and MobileNetV2 depthwise (2, 4); ASPP at OS8 (12, 24, 36)


def _rng(seed=0):
    return np.random.default_rng(seed)


def numpy_dilated_conv(x, kernel, rate, padding):
    """Stride-1 dilated cross-correlation, TF's SAME/VALID convention. kernel (kh, kw, C, F)."""
    kh, kw = kernel.shape[:2]
    eh, ew = (kh - 1) * rate + 1, (kw - 1) * rate + 1
    b, h, w, _ = x.shape
    if padding == "same":
        top, left = (eh - 1) // 2, (ew - 1) // 2
        x = np.pad(x, ((0, 0), (top, eh - 1 - top), (left, ew - 1 - left), (0, 0)))
        oh, ow = h, w
    else:
        oh, ow = h - eh + 1, w - ew + 1
    out = np.zeros((b, oh, ow, kernel.shape[-1]), np.float64)
    for i in range(kh):
        for j in range(kw):
            patch = x[:, i * rate:i * rate + oh, j * rate:j * rate + ow, :].astype(np.float64)
            out += patch @ kernel[i, j].astype(np.float64)
    return out


def _pair(new_cls, old_cls, x_shape, **kwargs):
    """The new layer and the Keras layer it replaces, built with identical weights."""
    new, old = new_cls(**kwargs), old_cls(**kwargs)
    new.build(x_shape)
    old.build(x_shape)
    old.set_weights(new.get_weights())
    return new, old


def _forward_and_grads(layer, x):
    x = tf.convert_to_tensor(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x)
        # A non-uniform upstream gradient, so every output position matters.
        upstream = np.sin(np.arange(np.prod(y.shape))).reshape(y.shape).astype("float32")
        loss = tf.reduce_sum(tf.cast(y, "float32") * upstream)
    grads = tape.gradient(loss, [x] + layer.trainable_variables)
    return y.numpy(), [g.numpy() for g in grads]


def _assert_close(a, b, rtol, what):
    scale = max(np.abs(b).max(), 1e-6)
    err = np.abs(a.astype(np.float64) - b.astype(np.float64)).max() / scale
    assert err <= rtol, f"{what}: max error {err:.2e} of max |value| (limit {rtol:.0e})"


def _graph_ops(layer, x):
    fn = tf.function(lambda t: layer(t))
    return {op.type for op in fn.get_concrete_function(tf.TensorSpec(x.shape, x.dtype)).graph.get_operations()}


@pytest.fixture(autouse=True)
def _native_on():
    previous = set_native_dilated_conv(True)
    yield
    set_native_dilated_conv(previous)


@pytest.mark.parametrize("rate", RATES)
@pytest.mark.parametrize("padding", ["same", "valid"])
def test_conv_matches_numpy_and_keras_conv2d(rate, padding):
    # Odd sizes; large enough that 'valid' keeps an output and every tap of 'same' lands.
    size = (2 * rate + 7, 2 * rate + 5)
    x = _rng(rate).standard_normal((2, *size, 5)).astype("float32")
    new, old = _pair(DilatedConv2D, keras.layers.Conv2D, x.shape, filters=6, kernel_size=3, padding=padding,
                     dilation_rate=rate, use_bias=True, bias_initializer="random_normal")
    y_new, g_new = _forward_and_grads(new, x)
    y_old, g_old = _forward_and_grads(old, x)
    kernel, bias = new.get_weights()
    _assert_close(y_new, numpy_dilated_conv(x, kernel, rate, padding) + bias, 2e-6, "output vs NumPy")
    _assert_close(y_new, y_old, 2e-6, "output vs keras Conv2D")
    for name, a, b in zip(["d input", "d kernel", "d bias"], g_new, g_old):
        _assert_close(a, b, 2e-6, f"{name} vs keras Conv2D")


@pytest.mark.parametrize("trace", ["static", "dynamic", "xla"])
@pytest.mark.parametrize("padding", ["same", "valid"])
def test_conv_gradient_where_taps_fall_in_the_padding(trace, padding):
    """Rate 24 on a map 9 high: whole rows of taps read only padding (skipped in the kernel
    gradient when shapes are static); unknown spatial sizes and XLA give the same numbers."""
    x = _rng(7).standard_normal((2, 9, 53, 5)).astype("float32")
    new, old = _pair(DilatedConv2D, keras.layers.Conv2D, x.shape, filters=3, kernel_size=3, padding=padding,
                     dilation_rate=(24, 2) if padding == "same" else (2, 24), use_bias=False)

    def grads(layer):
        def fn(t):
            with tf.GradientTape() as tape:
                tape.watch(t)
                y = layer(t)
                upstream = tf.reshape(tf.sin(tf.cast(tf.range(tf.size(y)), "float32")), tf.shape(y))
                loss = tf.reduce_sum(y * upstream)
            return [y] + tape.gradient(loss, [t, layer.kernel])

        spec = tf.TensorSpec((None, None, None, 5) if trace == "dynamic" else x.shape, tf.float32)
        return [v.numpy() for v in tf.function(fn, input_signature=[spec], jit_compile=trace == "xla")(x)]

    for what, a, b in zip(["output", "d input", "d kernel"], grads(new), grads(old)):
        _assert_close(a, b, 2e-6, f"{trace} {padding} {what}")


@pytest.mark.parametrize("rate", RATES)
@pytest.mark.parametrize("depth_multiplier", [1, 2])
def test_depthwise_matches_numpy_and_keras_depthwise(rate, depth_multiplier):
    size = (2 * rate + 5, 2 * rate + 3)
    x = _rng(rate + 1).standard_normal((2, *size, 4)).astype("float32")
    new, old = _pair(DilatedDepthwiseConv2D, keras.layers.DepthwiseConv2D, x.shape, kernel_size=3, padding="same",
                     dilation_rate=rate, depth_multiplier=depth_multiplier, use_bias=True,
                     bias_initializer="random_normal", activation="relu")
    y_new, g_new = _forward_and_grads(new, x)
    y_old, g_old = _forward_and_grads(old, x)
    kernel, bias = new.get_weights()  # (3, 3, C, M): output channel c * M + m
    ref = np.concatenate(
        [numpy_dilated_conv(x[..., c:c + 1], kernel[:, :, c:c + 1, :], rate, "same") for c in range(x.shape[-1])],
        axis=-1,
    )
    _assert_close(y_new, np.maximum(ref + bias, 0), 2e-6, "output vs NumPy")
    _assert_close(y_new, y_old, 2e-6, "output vs keras DepthwiseConv2D")
    for name, a, b in zip(["d input", "d kernel", "d bias"], g_new, g_old):
        _assert_close(a, b, 1e-5, f"{name} vs keras DepthwiseConv2D")


@pytest.mark.parametrize("cls", [DilatedConv2D, DilatedDepthwiseConv2D])
def test_native_path_is_taken_only_when_dilated(cls):
    x = tf.zeros((1, 31, 29, 4))
    kwargs = {"filters": 4} if cls is DilatedConv2D else {}
    dilated = cls(kernel_size=3, padding="same", dilation_rate=12, **kwargs)
    assert "SpaceToBatchND" not in _graph_ops(dilated, x)
    set_native_dilated_conv(False)
    assert not native_dilated_conv_enabled()
    assert "SpaceToBatchND" in _graph_ops(cls(kernel_size=3, padding="same", dilation_rate=12, **kwargs), x)


def test_strided_and_undilated_convs_fall_back_to_keras():
    x = _rng(3).standard_normal((2, 17, 15, 3)).astype("float32")
    for kwargs in ({"strides": 2, "padding": "same"}, {"strides": 2, "padding": "valid"}, {"padding": "same"}):
        new, old = _pair(DilatedConv2D, keras.layers.Conv2D, x.shape, filters=4, kernel_size=3, **kwargs)
        np.testing.assert_array_equal(new(x).numpy(), old(x).numpy())
        new, old = _pair(DilatedDepthwiseConv2D, keras.layers.DepthwiseConv2D, x.shape, kernel_size=3, **kwargs)
        np.testing.assert_array_equal(new(x).numpy(), old(x).numpy())
    # Keras refuses stride with dilation for Conv2D; the depthwise layer keeps Keras' own handling.
    with pytest.raises(ValueError):
        DilatedConv2D(4, 3, strides=2, dilation_rate=2)


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
@pytest.mark.parametrize("rate", [4, 36])
def test_mixed_precision(policy, rate):
    """bfloat16 runs natively; float16 keeps Keras' op (TF's CPU float16 dilated backprop is missing).

    Both agree with the float32 result to the compute dtype's precision, as Keras' layers do.
    """
    x = _rng(rate).standard_normal((2, 2 * rate + 9, 2 * rate + 7, 8)).astype("float32")
    for new_cls, old_cls, kwargs in (
        (DilatedConv2D, keras.layers.Conv2D, {"filters": 6}),
        (DilatedDepthwiseConv2D, keras.layers.DepthwiseConv2D, {}),
    ):
        reference, _ = _pair(old_cls, old_cls, x.shape, kernel_size=3, padding="same", dilation_rate=rate, **kwargs)
        y_ref, g_ref = _forward_and_grads(reference, x)
        previous = keras.config.dtype_policy()
        keras.config.set_dtype_policy(policy)
        try:
            new, old = _pair(new_cls, old_cls, x.shape, kernel_size=3, padding="same", dilation_rate=rate, **kwargs)
            new.set_weights(reference.get_weights())
            old.set_weights(reference.get_weights())
            y_new, g_new = _forward_and_grads(new, x)
            y_old, g_old = _forward_and_grads(old, x)
            native = "SpaceToBatchND" not in _graph_ops(new, tf.constant(x))
        finally:
            keras.config.set_dtype_policy(previous)
        assert native == (policy == "mixed_bfloat16")
        assert y_new.dtype == y_old.dtype and new.kernel.dtype == "float32"
        tol = 1e-2 if policy == "mixed_bfloat16" else 2e-3
        for what, a, b, r in [("output", y_new, y_old, y_ref)] + [
            ("gradient", a, b, r) for a, b, r in zip(g_new, g_old, g_ref)
        ]:
            old_err = np.abs(b.astype("float32") - r).max() / np.abs(r).max()
            # As close to float32 as Keras' own layer is (plus a little: rounding differs).
            _assert_close(a.astype("float32"), r, max(tol, 1.5 * old_err), f"{policy} {what} vs float32")


def test_config_and_variables_are_those_of_the_keras_layers():
    for new_cls, old_cls, kwargs in (
        (DilatedConv2D, keras.layers.Conv2D, {"filters": 6, "use_bias": False}),
        (DilatedDepthwiseConv2D, keras.layers.DepthwiseConv2D, {}),
    ):
        new, old = _pair(new_cls, old_cls, (None, 9, 9, 3), kernel_size=3, padding="same", dilation_rate=4,
                         name="conv", **kwargs)
        assert new.get_config() == old.get_config()
        assert [v.path for v in new.weights] == [v.path for v in old.weights]
        clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(new))
        assert type(clone) is new_cls and clone.get_config() == new.get_config()


@pytest.mark.parametrize("backbone", ["mobilenetv2", pytest.param("resnet50", marks=pytest.mark.slow)])
def test_weights_saved_from_keras_layers_load(backbone, tmp_path):
    """A model built with plain Conv2D/DepthwiseConv2D (the old code) -> .weights.h5 -> today's model."""
    from gscnn_tf.model import GatedSCNN

    cfg = tiny_model_config(backbone=backbone, output_stride=8, pretrained=None, num_classes=5)
    with mock.patch("gscnn_tf.layers.dilated_conv.Conv2D", keras.layers.Conv2D), \
            mock.patch("gscnn_tf.layers.dilated_conv.DepthwiseConv2D", keras.layers.DepthwiseConv2D):
        keras.utils.set_random_seed(1)
        old = GatedSCNN(cfg)
    assert "SpaceToBatchND" in _graph_ops(old, tf.zeros((1, 64, 64, 3)))  # the old path
    path = str(tmp_path / "old.weights.h5")
    old.save_weights(path)

    keras.utils.set_random_seed(2)  # different initial weights: loading must overwrite all of them
    new = GatedSCNN(cfg)
    assert "SpaceToBatchND" not in _graph_ops(new, tf.zeros((1, 64, 64, 3)))  # every dilated conv is native
    new.load_weights(path)
    image = _rng(5).uniform(0, 255, (1, 64, 64, 3)).astype("float32")  # RGB 0..255
    y_old, y_new = old(image, training=False), new(image, training=False)
    for key in ("seg_logits", "edge"):
        _assert_close(y_new[key].numpy(), y_old[key].numpy(), 1e-5, key)

