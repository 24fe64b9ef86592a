"""RGBImageNormalization: the model's own input preprocessing (RGB 0..255 -> backbone input).

Every backbone expects ``x = (rgb - mean) / std`` with its own constants
(:func:`gscnn_tf.backbones.normalization_for`). Doing this inside the model means a user,
the data pipeline, the serving graph and the evaluation all hand the model plain RGB
pixels, and no caller can pair a backbone with the wrong constants.

Why not ``keras.layers.Normalization``: it divides by ``sqrt(variance)`` (not bit-equal to
``std``, which the official-checkpoint equivalence test can see through the wrapped Canny
input), follows the mixed-precision policy (this layer always computes in float32, the
Canny input must not round to float16), and cannot check the input range.
"""
from __future__ import annotations

import keras
from keras import ops

# The valid input range; anything outside it is not an RGB image in 0..255 units.
PIXEL_MIN = 0.0
PIXEL_MAX = 255.0
RANGE_ERROR = (
    "GatedSCNN takes RGB images with values in 0..255 (uint8, or float in 0..255 units) and "
    "normalises them itself; got values outside 0..255. Do not normalise images before "
    "calling the model"
)


def _check_pixel_range(x):
    """Fails with :data:`RANGE_ERROR` when ``x`` (float32) leaves 0..255.

    keras.ops has no assertion op, so this is the one backend-specific piece of the layers:
    on TensorFlow an in-graph ``tf.debugging`` assertion (it holds in ``tf.function``,
    ``model.fit``/``predict`` and exported SavedModels); on other backends the check runs
    when the values are concrete (eager calls) and is skipped inside a traced function.
    """
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        checks = [
            tf.debugging.assert_greater_equal(x, PIXEL_MIN, message=RANGE_ERROR),
            tf.debugging.assert_less_equal(x, PIXEL_MAX, message=RANGE_ERROR),
        ]
        with tf.control_dependencies(checks):
            return tf.identity(x)
    try:
        low, high = float(ops.min(x)), float(ops.max(x))
    except Exception:  # noqa: BLE001 - a tracer has no concrete value: nothing to check
        return x
    if low < PIXEL_MIN or high > PIXEL_MAX:
        raise ValueError(f"{RANGE_ERROR} (min {low:g}, max {high:g})")
    return x


@keras.saving.register_keras_serializable(package="gscnn_tf")
class RGBImageNormalization(keras.layers.Layer):
    """RGB images in 0..255 -> ``(rgb - mean) / std`` float32, with a range check.

    Input: (B, H, W, 3) uint8 or float in 0..255 (any H, W). Output: (B, H, W, 3) float32,
    also under a mixed-precision policy. No weights.

    Args:
        mean, std: RGB 3-tuples in 0..255 units (``gscnn_tf.backbones.normalization_for``).
        check_range: fail (see :data:`RANGE_ERROR`) on values outside 0..255, which is
            what an image normalised by the caller looks like (it has negative values
            wherever a pixel is darker than the mean).

    Example::

        layer = RGBImageNormalization(mean=(127.5,) * 3, std=(127.5,) * 3)
        layer(np.full((1, 8, 8, 3), 255, np.uint8))  # -> all ones
    """

    def __init__(self, mean, std, check_range: bool = True, **kwargs):
        kwargs["dtype"] = "float32"
        kwargs.setdefault("trainable", False)
        super().__init__(**kwargs)
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError(f"mean/std must be 3 RGB values with std > 0, got {mean!r}, {std!r}")
        self.check_range = bool(check_range)

    def call(self, images):
        x = ops.cast(images, "float32")
        if self.check_range:
            x = _check_pixel_range(x)
        return (x - ops.convert_to_tensor(self.mean, "float32")) / ops.convert_to_tensor(self.std, "float32")

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(mean=list(self.mean), std=list(self.std), check_range=self.check_range)
        return config
