"""Bilinear resize of a tensor to the spatial size of a reference tensor.

Gated-SCNN moves features between resolutions everywhere (shape-stream inputs up to the
image size, the shape map down to the ASPP grid, the ASPP output up to the decoder's
low-level grid, logits up to the image). Sizes are only known at run time (the model takes
``(None, None, None, 3)`` images), so the target size is read from a reference tensor
instead of being fixed when the model is built.
"""
from __future__ import annotations

import keras
from keras import ops


def resize_to(x, size_hw, interpolation: str = "bilinear"):
    """Resizes ``x`` (B, h, w, C) to ``size_hw`` = (H, W), which may be run-time tensors.

    ``keras.ops.image.resize`` validates ``size`` with a Python ``if`` and so fails inside a
    ``tf.function`` when the size is only known at run time (``model.fit``, SavedModel
    signatures with ``None`` spatial dims). On the TensorFlow backend we call
    ``tf.image.resize`` — the op ``keras.ops.image.resize`` itself lowers to there.
    """
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


def resize_like(x, reference, interpolation: str = "bilinear", dtype=None):
    """Functional form for use inside composite layers: ``x`` resized to ``reference``'s H, W."""
    resized = resize_to(x, ops.shape(reference)[1:3], interpolation)
    return ops.cast(resized, dtype or x.dtype)
