"""Dilated convolutions that run TensorFlow's native dilated kernels.

Keras' ``Conv2D`` calls ``tf.nn.convolution`` on the TensorFlow backend; for any dilation
rate above 1 (outside a TPU) that wraps an undilated convolution in ``space_to_batch`` /
``batch_to_space``. The padded, reshuffled grid is several times the feature map at the
ASPP's rates (12/24/36 at output stride 8), and the reshuffles themselves cost as much as a
pass over the data, forward and backward, on CPU and GPU alike. ``tf.nn.conv2d`` and the
``DepthwiseConv2dNative`` op take ``dilations`` directly and run one dilated kernel
(oneDNN on CPU; cuDNN on a GPU, not tested here) on the unpadded map. The kernel gradient
of the dense conv is written as one matmul per tap (see :func:`_native_conv2d`).

:class:`Conv2D` and :class:`DepthwiseConv2D` here are Keras' ``Conv2D`` /
``DepthwiseConv2D`` with that one difference. They have the same variables (names, shapes),
the same ``get_config`` and the same numbers (to float32 summation order; tested), so weight
files and checkpoints written with the Keras layers load unchanged. They keep Keras' class
names on purpose: Keras' ``.weights.h5`` files key the layers of a model by the snake-cased
class name (``conv2d_7``), so a renamed subclass would not find its weights
(``gscnn_tf>Conv2D`` is their registered name for ``.keras`` files).

The native path is taken only where it applies: the TensorFlow backend, a dilation rate
above 1, stride 1 (Keras refuses strides together with dilation for ``Conv2D`` anyway),
channels-last, ungrouped, compute dtype float32 or bfloat16 (float16 is left to Keras'
op: TensorFlow's CPU ``Conv2DBackpropInput`` refuses dilation in float16); for the
depthwise layer also 'same' padding, an odd kernel and depth multiplier 1, because its
gradient is written here (TensorFlow's CPU depthwise backprop kernels ignore dilation).
Everything else, and every other backend (JAX compiles dilation natively through XLA),
runs the Keras op unchanged.

``set_native_dilated_conv(False)`` (or the environment variable
``GSCNN_NATIVE_DILATED_CONV=0`` at import) turns the native path off, so a benchmark can
time both paths in one run. It is read when a layer is *traced*: a ``tf.function`` that
was already traced keeps the path it was traced with.
"""
from __future__ import annotations

import os

import keras

_NATIVE = {"enabled": os.environ.get("GSCNN_NATIVE_DILATED_CONV", "1") != "0"}


def set_native_dilated_conv(enabled: bool) -> bool:
    """Turns TensorFlow's native dilated kernels on or off; returns the previous setting."""
    previous = _NATIVE["enabled"]
    _NATIVE["enabled"] = bool(enabled)
    return previous


def native_dilated_conv_enabled() -> bool:
    """Whether the native path is on (it still applies only on the TensorFlow backend)."""
    return _NATIVE["enabled"]


# float16 is left out: TensorFlow's CPU Conv2DBackpropInput refuses dilation in float16.
_NATIVE_DTYPES = ("float32", "bfloat16")


def _use_native(layer) -> bool:
    return (
        _NATIVE["enabled"]
        and keras.backend.backend() == "tensorflow"
        and layer.compute_dtype in _NATIVE_DTYPES
        and max(layer.dilation_rate) > 1
        and max(layer.strides) == 1
        and layer.data_format == "channels_last"
        and getattr(layer, "groups", 1) == 1
    )


def _tf_padding(padding: str) -> str:
    # Keras' "same"/"valid" are TensorFlow's SAME/VALID (the Keras TF backend passes
    # padding.upper() to tf.nn.convolution, whose dilated padding equals the native one).
    return padding.upper()


@keras.saving.register_keras_serializable(package="gscnn_tf")
class Conv2D(keras.layers.Conv2D):
    """``keras.layers.Conv2D`` whose dilated case runs ``tf.nn.conv2d(..., dilations=)``.

    Same arguments, variables and config as ``Conv2D``. Input (B, H, W, C_in) ->
    (B, H', W', filters); H' = H with ``padding="same"`` (stride 1).
    """

    def convolution_op(self, inputs, kernel):
        if not _use_native(self):
            return super().convolution_op(inputs, kernel)
        import tensorflow as tf

        inputs = tf.convert_to_tensor(inputs)
        kernel = tf.cast(tf.convert_to_tensor(kernel), inputs.dtype)
        return _native_conv2d(inputs, kernel, tuple(self.dilation_rate), _tf_padding(self.padding))


def _native_conv2d(inputs, kernel, dilations, padding):
    """``tf.nn.conv2d`` with dilation (stride 1), with a faster kernel gradient.

    inputs (B, H, W, C_in), kernel (kh, kw, C_in, C_out) -> (B, H', W', C_out).
    Forward and input gradient are TensorFlow's own (``Conv2D`` and
    ``Conv2DBackpropInput`` with ``dilations``). The kernel gradient is one matmul per tap:
    ``dK[i, j] = X_shifted(i, j)^T dY`` over the output pixels whose tap lands inside the
    image. That is 1.6x faster than ``Conv2DBackpropFilter`` with dilation on oneDNN at the
    ASPP's shapes (``bench/bench_train_step.py``), and a tap that lands only in the zero
    padding (rate 36 on a 32-pixel-high map: 6 of 9 taps) costs nothing.
    """
    import tensorflow as tf

    kh, kw = int(kernel.shape[0]), int(kernel.shape[1])
    rh, rw = dilations
    tf_dilations = [1, rh, rw, 1]

    @tf.custom_gradient
    def conv(x, k):
        y = tf.nn.conv2d(x, k, strides=1, padding=padding, data_format="NHWC", dilations=tf_dilations)

        def grad(dy):
            dx = tf.raw_ops.Conv2DBackpropInput(
                input_sizes=tf.shape(x), filter=k, out_backprop=dy, strides=[1, 1, 1, 1], padding=padding,
                data_format="NHWC", dilations=tf_dilations,
            )
            return dx, _dilated_kernel_grad(x, dy, (kh, kw), (rh, rw), padding)

        return y, grad

    return conv(inputs, kernel)


def _tap_range(offset, in_size, out_size):
    """Output rows [lo, hi) whose input row ``row + offset`` lies in [0, in_size)."""
    import tensorflow as tf

    if isinstance(in_size, int) and isinstance(out_size, int):
        lo, hi = max(0, -offset), min(out_size, in_size - offset)
        return lo, max(lo, hi)
    lo = tf.maximum(0, -offset)
    return lo, tf.maximum(lo, tf.minimum(out_size, in_size - offset))


def _dilated_kernel_grad(x, dy, kernel_hw, dilations, padding):
    """Gradient of a stride-1 dilated conv with respect to its kernel; (kh, kw, C_in, C_out).

    Tap (i, j) reads input pixel (y + i * rh - top, x + j * rw - left) for output pixel
    (y, x), where (top, left) is TensorFlow's padding (SAME: half the dilated extent minus
    one, the smaller half first; VALID: 0). Pixels read from the padding contribute 0.
    """
    import tensorflow as tf

    (kh, kw), (rh, rw) = kernel_hw, dilations

    def dim(t, axis):  # static when known, so empty taps are dropped while tracing
        return t.shape[axis] if t.shape[axis] is not None else tf.shape(t)[axis]

    in_h, in_w, out_h, out_w = dim(x, 1), dim(x, 2), dim(dy, 1), dim(dy, 2)
    top = ((kh - 1) * rh) // 2 if padding == "SAME" else 0
    left = ((kw - 1) * rw) // 2 if padding == "SAME" else 0
    c_in, c_out = x.shape[-1], dy.shape[-1]
    rows = []
    for i in range(kh):
        y0, y1 = _tap_range(i * rh - top, in_h, out_h)
        row = []
        for j in range(kw):
            x0, x1 = _tap_range(j * rw - left, in_w, out_w)
            if isinstance(y1, int) and isinstance(x1, int) and (y1 == y0 or x1 == x0):
                row.append(tf.zeros((c_in, c_out), dy.dtype))
                continue
            xs = x[:, y0 + i * rh - top:y1 + i * rh - top, x0 + j * rw - left:x1 + j * rw - left, :]
            ds = dy[:, y0:y1, x0:x1, :]
            row.append(tf.matmul(tf.reshape(xs, (-1, c_in)), tf.reshape(ds, (-1, c_out)), transpose_a=True))
        rows.append(tf.stack(row))
    return tf.stack(rows)


@keras.saving.register_keras_serializable(package="gscnn_tf")
class DepthwiseConv2D(keras.layers.DepthwiseConv2D):
    """``keras.layers.DepthwiseConv2D`` whose dilated case runs the native depthwise op.

    ``tf.nn.depthwise_conv2d`` with ``dilations`` also goes through ``space_to_batch``; the
    ``DepthwiseConv2dNative`` op (``tf.raw_ops``, public) takes the dilation itself. Native
    only for 'same' padding, odd kernels and ``depth_multiplier=1`` (see
    :func:`_native_depthwise`); other settings run the Keras op.
    Same arguments, variables and config as ``DepthwiseConv2D``. Input (B, H, W, C) ->
    (B, H', W', C * depth_multiplier).
    """

    def call(self, inputs):
        if not (_use_native(self) and self._native_supported()):
            return super().call(inputs)
        import tensorflow as tf

        inputs = tf.convert_to_tensor(inputs)
        kernel = tf.cast(tf.convert_to_tensor(self.kernel), inputs.dtype)
        outputs = _native_depthwise(inputs, kernel, tuple(self.dilation_rate))
        if self.use_bias:
            outputs = outputs + tf.cast(tf.convert_to_tensor(self.bias), outputs.dtype)
        if self.activation is not None:
            outputs = self.activation(outputs)
        return outputs

    def _native_supported(self) -> bool:
        # The case the custom gradient below is written for (MobileNetV2's depthwise convs):
        # 'same' padding with an odd kernel pads symmetrically, one output per input channel.
        return (
            self.padding == "same"
            and self.depth_multiplier == 1
            and all(k % 2 == 1 for k in self.kernel_size)
        )


def _native_depthwise(inputs, kernel, dilations):
    """``DepthwiseConv2dNative`` with dilation, stride 1, 'same', multiplier 1, odd kernel.

    inputs (B, H, W, C), kernel (kh, kw, C, 1) -> (B, H, W, C). The op's registered
    gradient runs ``DepthwiseConv2dNativeBackprop{Input,Filter}``, whose CPU kernels
    ignore ``dilations`` (wrong gradients, tested), so the gradient is written here:

    * d inputs: the same dilated depthwise conv of the upstream gradient with the kernel
      rotated 180 degrees (exact because 'same' padding is symmetric for odd kernels);
    * d kernel: for each tap (i, j), the sum over batch and pixels of the upstream gradient
      times the padded input shifted by (i * rate, j * rate), accumulated in float32.
    """
    import tensorflow as tf

    kh, kw = kernel.shape[0], kernel.shape[1]
    rh, rw = dilations
    strides = [1, 1, 1, 1]
    tf_dilations = [1, rh, rw, 1]

    @tf.custom_gradient
    def conv(x, k):
        y = tf.raw_ops.DepthwiseConv2dNative(
            input=x, filter=k, strides=strides, padding="SAME", data_format="NHWC", dilations=tf_dilations
        )

        def grad(dy):
            dx = tf.raw_ops.DepthwiseConv2dNative(
                input=dy, filter=tf.reverse(k, axis=[0, 1]), strides=strides, padding="SAME", data_format="NHWC",
                dilations=tf_dilations,
            )
            ph, pw = (kh - 1) * rh // 2, (kw - 1) * rw // 2
            padded = tf.pad(x, [[0, 0], [ph, ph], [pw, pw], [0, 0]])
            h, w = tf.shape(x)[1], tf.shape(x)[2]
            taps = []
            for i in range(kh):
                for j in range(kw):
                    shifted = padded[:, i * rh:i * rh + h, j * rw:j * rw + w, :]
                    taps.append(tf.reduce_sum(tf.cast(shifted * dy, "float32"), axis=[0, 1, 2]))
            dk = tf.reshape(tf.stack(taps), (kh, kw, -1, 1))
            return dx, tf.cast(dk, k.dtype)

        return y, grad

    return conv(inputs, kernel)
