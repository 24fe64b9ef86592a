"""Bilinear resize of a tensor to the spatial size of a reference tensor.

Gated-SCNN moves features between resolutions everywhere (shape-stream inputs up to the
image size, the shape map down to the ASPP grid, the ASPP output up to the decoder's
low-level grid, logits up to the image). Sizes are only known at run time (the model takes
``(None, None, None, 3)`` images), so the target size is read from a reference tensor
instead of being fixed when the model is built.

Two sampling grids are offered. The default is half-pixel centres (``tf.image.resize``,
PyTorch ``align_corners=False``), which this package uses everywhere. ``align_corners=True``
maps the corner pixels of input and output onto each other (PyTorch's
``F.interpolate(..., align_corners=True)``); the official Gated-SCNN code uses it at some
resizes, and ``model.official_compat`` reproduces those so that its weights compute what
they were trained to compute.
"""
from __future__ import annotations

import keras
from keras import ops


def resize_bilinear_align_corners(x, size_hw):
    """Bilinear resize of ``x`` (B, h, w, C) to ``size_hw`` = (H, W) with aligned corners.

    Output pixel ``i`` samples input coordinate ``i * (h - 1) / (H - 1)`` (0 when H == 1),
    interpolating linearly between its two neighbours, separably along H then W: PyTorch's
    ``align_corners=True`` bilinear. Pure ``keras.ops`` gathers and lerps (TF and JAX), and
    ``size_hw`` may hold run-time tensors. Computes in float32 (the ratio is float32 in
    PyTorch too) and returns the input's dtype.
    """
    dtype = x.dtype
    x = ops.cast(x, "float32")
    for axis in (1, 2):
        x = _lerp_axis(x, axis, size_hw[axis - 1])
    return ops.cast(x, dtype)


def _lerp_axis(x, axis, out_size):
    in_size = ops.shape(x)[axis]
    in_f = ops.cast(in_size, "float32")
    out_f = ops.cast(out_size, "float32")
    scale = ops.where(out_f > 1.0, (in_f - 1.0) / ops.maximum(out_f - 1.0, 1.0), 0.0)
    src = ops.cast(ops.arange(out_size), "float32") * scale
    lo = ops.minimum(ops.cast(ops.floor(src), "int32"), in_size - 1)
    hi = ops.minimum(lo + 1, in_size - 1)
    frac = src - ops.cast(lo, "float32")
    shape = [1, 1, 1, 1]
    shape[axis] = -1
    frac = ops.reshape(frac, shape)
    a = ops.take(x, lo, axis=axis)
    b = ops.take(x, hi, axis=axis)
    return a + (b - a) * frac


def resize_to(x, size_hw, interpolation: str = "bilinear", align_corners: bool = False):
    """Resizes ``x`` (B, h, w, C) to ``size_hw`` = (H, W), which may be run-time tensors.

    ``keras.ops.image.resize`` validates ``size`` with a Python ``if`` and so fails inside a
    ``tf.function`` when the size is only known at run time (``model.fit``, SavedModel
    signatures with ``None`` spatial dims). On the TensorFlow backend we call
    ``tf.image.resize`` — the op ``keras.ops.image.resize`` itself lowers to there.
    ``align_corners=True`` (bilinear only) uses :func:`resize_bilinear_align_corners`.
    """
    if align_corners:
        if interpolation != "bilinear":
            raise ValueError(f"align_corners=True supports bilinear interpolation only, got {interpolation!r}")
        return resize_bilinear_align_corners(x, size_hw)
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return tf.image.resize(x, size_hw, method=interpolation)
    return ops.image.resize(x, size_hw, interpolation=interpolation)


@keras.saving.register_keras_serializable(package="gscnn_tf")
class ResizeToReference(keras.layers.Layer):
    """Resizes ``x`` to the height and width of ``reference``.

    Call: ``layer([x, reference])``
        x: (B, h, w, C); reference: (B, H, W, any) (only its spatial size is used).
    Returns: (B, H, W, C) in the layer's compute dtype.

    Uses half-pixel-centre interpolation (``tf.image.resize`` / PyTorch
    ``align_corners=False``); resizing to the same size is the identity.
    """

    def __init__(self, interpolation: str = "bilinear", **kwargs):
        super().__init__(**kwargs)
        self.interpolation = interpolation

    def call(self, inputs):
        x, reference = inputs
        resized = resize_to(x, ops.shape(reference)[1:3], self.interpolation)
        # tf.image.resize returns float32 for float16 inputs; keep mixed precision consistent.
        return ops.cast(resized, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        x_shape, reference_shape = input_shape
        return (x_shape[0], reference_shape[1], reference_shape[2], x_shape[-1])

    def get_config(self):
        config = super().get_config()
        config["interpolation"] = self.interpolation
        return config


def resize_like(x, reference, interpolation: str = "bilinear", dtype=None, align_corners: bool = False):
    """Functional form for use inside composite layers: ``x`` resized to ``reference``'s H, W."""
    resized = resize_to(x, ops.shape(reference)[1:3], interpolation, align_corners=align_corners)
    return ops.cast(resized, dtype or x.dtype)
