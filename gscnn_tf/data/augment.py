"""Joint image/label augmentations in TensorFlow ops (docs/PAPER.md section 4).

The official GSCNN recipe: random scale 0.5-2.0, random crop (padded with the ignore
label), horizontal flip, colour jitter 0.25 and Gaussian blur. Every op here takes the
image (H, W, 3) as uint8 or float32 in 0..255 units and the label (H, W) as uint8 train
ids, and returns the image as float32 in 0..255 units (not yet normalised).

Randomness comes from :class:`RandomSource`: with a seed (a length-2 int tensor, e.g.
``[base_seed, element_index]``) every draw is a ``tf.random.stateless_*`` call on a seed
folded from it and a fixed per-draw tag, so the same seed always gives the same
augmentation; without a seed the fast stateful ``tf.random`` ops are used.

Order (cheapest that keeps the padding exact): scale + crop window (fused: only the
window of the scaled image is computed, see :func:`scale_and_crop`) -> flip -> colour
jitter -> blur -> pad. Jitter and blur run on the cropped, unpadded pixels, so the padded
area is exactly :data:`PAD_COLOR` (black, as the official code pads) and the ignore label.
"""
from __future__ import annotations

from typing import Optional, Sequence

import tensorflow as tf

from gscnn_tf.data.labels import IGNORE_LABEL

# Fixed tags folded into the element seed: one per random draw, so adding a draw later
# does not change the others.
_TAG_SCALE = 1
_TAG_CROP_Y = 2
_TAG_CROP_X = 3
_TAG_FLIP = 4
_TAG_BRIGHTNESS = 5
_TAG_CONTRAST = 6
_TAG_SATURATION = 7
_TAG_HUE = 8
_TAG_BLUR_APPLY = 9
_TAG_BLUR_SIGMA = 10

# Image padding colour: the official RandomCrop pads with black, before normalisation.
PAD_COLOR = (0.0, 0.0, 0.0)

# Official GSCNN RandomGaussianBlur: sigma = 0.15 + U(0, 1) * 1.15.
BLUR_SIGMA_RANGE = (0.15, 1.3)
BLUR_RADIUS = 4  # kernel 9x9: >= 3 sigma at the largest sigma

_GRAY_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R 601 luma, as torchvision / PIL "L"


class RandomSource:
    """Draws random numbers either statelessly from a seed or from the global generator.

    Args:
      seed: None (fast stateful ops) or an int tensor/sequence of shape [2].
    """

    def __init__(self, seed=None):
        self.seed = None if seed is None else tf.cast(tf.convert_to_tensor(seed), tf.int64)
        if self.seed is not None:
            self.seed = tf.ensure_shape(tf.reshape(self.seed, [-1]), [2])

    @property
    def deterministic(self) -> bool:
        return self.seed is not None

    def _sub_seed(self, tag: int) -> tf.Tensor:
        return tf.random.experimental.stateless_fold_in(self.seed, tag)

    def uniform(self, tag: int, minval=0.0, maxval=1.0, shape=(), dtype=tf.float32) -> tf.Tensor:
        if self.seed is None:
            return tf.random.uniform(shape, minval, maxval, dtype=dtype)
        return tf.random.stateless_uniform(shape, self._sub_seed(tag), minval, maxval, dtype=dtype)

    def uniform_int(self, tag: int, maxval_exclusive: tf.Tensor) -> tf.Tensor:
        """An int32 in [0, maxval_exclusive) (maxval_exclusive >= 1, may be a tensor)."""
        maxval_exclusive = tf.cast(maxval_exclusive, tf.float32)
        u = self.uniform(tag)  # in [0, 1)
        value = tf.cast(tf.floor(u * maxval_exclusive), tf.int32)
        return tf.minimum(value, tf.cast(maxval_exclusive, tf.int32) - 1)

    def bernoulli(self, tag: int, prob: float) -> tf.Tensor:
        return self.uniform(tag) < prob


def _as_float_image(image: tf.Tensor) -> tf.Tensor:
    return tf.cast(image, tf.float32)


def scaled_size(height, width, scale) -> tuple:
    """Output size of :func:`scale_image_and_label`: ``round(size * scale)``, at least 1."""
    h = tf.maximum(tf.cast(tf.round(tf.cast(height, tf.float32) * scale), tf.int32), 1)
    w = tf.maximum(tf.cast(tf.round(tf.cast(width, tf.float32) * scale), tf.int32), 1)
    return h, w


def scale_image_and_label(image: tf.Tensor, label: tf.Tensor, scale) -> tuple:
    """Resizes the image bilinearly and the label with nearest neighbour by ``scale``.

    Returns ``(image float32 (h, w, 3), label uint8 (h, w))`` with
    ``h, w = round(H * scale), round(W * scale)``.
    """
    shape = tf.shape(image)
    h, w = scaled_size(shape[0], shape[1], scale)
    out_image = tf.image.resize(_as_float_image(image), [h, w], method="bilinear", antialias=False)
    out_label = tf.image.resize(label[..., None], [h, w], method="nearest")[..., 0]
    return out_image, tf.cast(out_label, label.dtype)


def _bilinear_taps(start, length, in_size, ratio):
    """tf.image.resize (bilinear, half-pixel centres) source taps of output rows
    ``start .. start + length - 1``: lower/upper indices and the interpolation weight,
    computed with the same float32 arithmetic as TensorFlow's ResizeBilinear kernel."""
    out = tf.cast(tf.range(start, start + length), tf.float32)
    src = (out + 0.5) * ratio - 0.5
    floor = tf.floor(src)
    lower = tf.maximum(tf.cast(floor, tf.int32), 0)
    upper = tf.minimum(tf.cast(tf.math.ceil(src), tf.int32), in_size - 1)
    return lower, upper, src - floor


def _nearest_taps(start, length, in_size, ratio):
    """tf.image.resize (nearest, half-pixel centres) source indices: floor((i + 0.5) * ratio)."""
    out = tf.cast(tf.range(start, start + length), tf.float32)
    return tf.clip_by_value(tf.cast(tf.floor((out + 0.5) * ratio), tf.int32), 0, in_size - 1)


def scale_and_crop(image, label, scaled_hw, window) -> tuple:
    """The window ``(y0, x0, h, w)`` of the image/label resized to ``scaled_hw``, computed
    without resizing the whole image.

    Equals ``scale_image_and_label`` followed by slicing ``[y0:y0+h, x0:x0+w]`` (same
    taps and weights as TF's bilinear / nearest resize), but only touches the source
    pixels under the window: at scale 2 a 1024x2048 image would otherwise become a
    2048x4096 float image for an 800x800 crop.
    """
    shape = tf.shape(label)
    in_h, in_w = shape[0], shape[1]
    out_h, out_w = scaled_hw
    y0, x0, h, w = window
    ratio_y = tf.cast(in_h, tf.float32) / tf.cast(out_h, tf.float32)
    ratio_x = tf.cast(in_w, tf.float32) / tf.cast(out_w, tf.float32)

    y_lo, y_hi, y_lerp = _bilinear_taps(y0, h, in_h, ratio_y)
    x_lo, x_hi, x_lerp = _bilinear_taps(x0, w, in_w, ratio_x)
    ya, yb = y_lo[0], y_hi[-1] + 1
    xa, xb = x_lo[0], x_hi[-1] + 1
    src = _as_float_image(image[ya:yb, xa:xb])

    def horizontal(rows):
        left = tf.gather(rows, x_lo - xa, axis=1)
        right = tf.gather(rows, x_hi - xa, axis=1)
        return left + (right - left) * x_lerp[None, :, None]

    # Row-wise horizontal interpolation first (on the window's rows, fewer than the output
    # rows when upscaling), then pick the upper/lower rows: the same values as TF's kernel.
    rows = horizontal(src)
    top = tf.gather(rows, y_lo - ya)
    bottom = tf.gather(rows, y_hi - ya)
    out_image = top + (bottom - top) * y_lerp[:, None, None]

    ny = _nearest_taps(y0, h, in_h, ratio_y)
    nx = _nearest_taps(x0, w, in_w, ratio_x)
    out_label = tf.gather(tf.gather(label, ny), nx, axis=1)
    return out_image, out_label


def random_scale_and_crop(image, label, min_scale: float, max_scale: float, crop_size: Sequence[int], rng: RandomSource) -> tuple:
    """Random scale in [min_scale, max_scale], then a random window of ``min(size, crop)``
    per axis of the scaled image (no padding yet); the scaled image is never materialised."""
    shape = tf.shape(label)
    scale = rng.uniform(_TAG_SCALE, min_scale, max_scale) if (min_scale, max_scale) != (1.0, 1.0) else 1.0
    out_h, out_w = scaled_size(shape[0], shape[1], scale)
    h = tf.minimum(out_h, int(crop_size[0]))
    w = tf.minimum(out_w, int(crop_size[1]))
    y0 = rng.uniform_int(_TAG_CROP_Y, out_h - h + 1)
    x0 = rng.uniform_int(_TAG_CROP_X, out_w - w + 1)
    return scale_and_crop(image, label, (out_h, out_w), (y0, x0, h, w))


def pad_rgb(image, paddings, color: Sequence[float]) -> tf.Tensor:
    """Pads the two spatial axes of an (..., H, W, 3) image (``paddings`` = [[top, bottom],
    [left, right]]) with an RGB ``color``. One pad per channel keeps the unpadded pixels
    bit-exact (no subtract/add round-off)."""
    lead = [[0, 0]] * (image.shape.rank - 3)
    return tf.stack([tf.pad(image[..., c], lead + list(paddings), constant_values=float(color[c])) for c in range(3)],
                    axis=-1)


def pad_to_size(
    image, label, crop_size: Sequence[int], pad_color: Sequence[float], ignore_label: int, rng: RandomSource
) -> tuple:
    """Pads (at a random offset) to exactly ``crop_size``: the image with ``pad_color``
    (RGB, 0..255), the label with ``ignore_label``. Larger inputs are an error."""
    shape = tf.shape(label)
    crop_h, crop_w = int(crop_size[0]), int(crop_size[1])
    extra_h = crop_h - shape[0]
    extra_w = crop_w - shape[1]
    # Reuse the crop tags: an axis is either cropped or padded, never both.
    top = rng.uniform_int(_TAG_CROP_Y, tf.maximum(extra_h, 0) + 1)
    left = rng.uniform_int(_TAG_CROP_X, tf.maximum(extra_w, 0) + 1)
    paddings = [[top, tf.maximum(extra_h, 0) - top], [left, tf.maximum(extra_w, 0) - left]]
    image = pad_rgb(image, paddings, pad_color)
    label = tf.pad(label, paddings, constant_values=tf.cast(ignore_label, label.dtype))
    image = tf.ensure_shape(image, [crop_h, crop_w, 3])
    label = tf.ensure_shape(label, [crop_h, crop_w])
    return image, label


def random_flip(image, label, rng: RandomSource, prob: float = 0.5) -> tuple:
    """Flips image and label left-right together with probability ``prob``."""
    flip = rng.bernoulli(_TAG_FLIP, prob)
    image = tf.cond(flip, lambda: tf.reverse(image, axis=[1]), lambda: image)
    label = tf.cond(flip, lambda: tf.reverse(label, axis=[1]), lambda: label)
    return image, label


def _grayscale(image: tf.Tensor) -> tf.Tensor:
    # Channel slices: much faster on CPU than a reduction over a size-3 innermost axis.
    r, g, b = _GRAY_WEIGHTS
    return image[..., 0:1] * r + image[..., 1:2] * g + image[..., 2:3] * b


def adjust_color(image, brightness=1.0, contrast=1.0, saturation=1.0, hue=0.0) -> tf.Tensor:
    """torchvision ``ColorJitter`` arithmetic with given factors, image float 0..255.

    brightness: multiply; contrast: blend with the mean grey level; saturation: blend
    with the greyscale image; hue: rotate the HSV hue by ``hue`` turns. Clipped to
    [0, 255] after each step, like torchvision on uint8 images.
    """
    image = _as_float_image(image)
    image = tf.clip_by_value(image * brightness, 0.0, 255.0)
    # mean(grey) = sum_c w_c * mean(channel c): one spatial reduction, no grey image.
    mean = tf.reduce_sum(tf.reduce_mean(image, axis=[0, 1]) * tf.constant(_GRAY_WEIGHTS, tf.float32))
    image = tf.clip_by_value((image - mean) * contrast + mean, 0.0, 255.0)
    gray = _grayscale(image)
    image = tf.clip_by_value((image - gray) * saturation + gray, 0.0, 255.0)
    image = tf.image.adjust_hue(image / 255.0, hue) * 255.0
    return tf.clip_by_value(image, 0.0, 255.0)


def random_color_jitter(image, strength: float, rng: RandomSource) -> tf.Tensor:
    """Brightness/contrast/saturation factors in [1-s, 1+s], hue shift in [-s, s] turns
    (torchvision ``ColorJitter(s, s, s, s)``; hue strength capped at 0.5)."""
    if strength <= 0:
        return _as_float_image(image)
    lo = max(0.0, 1.0 - strength)
    hi = 1.0 + strength
    hue_max = min(strength, 0.5)
    return adjust_color(
        image,
        brightness=rng.uniform(_TAG_BRIGHTNESS, lo, hi),
        contrast=rng.uniform(_TAG_CONTRAST, lo, hi),
        saturation=rng.uniform(_TAG_SATURATION, lo, hi),
        hue=rng.uniform(_TAG_HUE, -hue_max, hue_max),
    )


def gaussian_kernel_1d(sigma, radius: int = BLUR_RADIUS) -> tf.Tensor:
    """Normalised 1-D Gaussian taps exp(-x^2 / (2 sigma^2)), x in [-radius, radius]."""
    x = tf.range(-radius, radius + 1, dtype=tf.float32)
    k = tf.exp(-(x * x) / (2.0 * tf.square(tf.cast(sigma, tf.float32))))
    return k / tf.reduce_sum(k)


def gaussian_blur(image, sigma, radius: int = BLUR_RADIUS) -> tf.Tensor:
    """Separable Gaussian blur of an (H, W, C) image, borders reflected (OpenCV's
    BORDER_REFLECT_101; same as ``cv2.GaussianBlur(img, (2r+1, 2r+1), sigma)``).

    Images smaller than ``radius + 1`` along an axis are returned unchanged.
    """
    image = _as_float_image(image)
    shape = tf.shape(image)
    channels = image.shape[-1] or 3

    def blur():
        k = gaussian_kernel_1d(sigma, radius)
        x = tf.pad(image, [[radius, radius], [radius, radius], [0, 0]], mode="REFLECT")[None]
        kv = tf.tile(tf.reshape(k, [-1, 1, 1, 1]), [1, 1, channels, 1])
        kh = tf.tile(tf.reshape(k, [1, -1, 1, 1]), [1, 1, channels, 1])
        x = tf.nn.depthwise_conv2d(x, kv, [1, 1, 1, 1], "VALID")
        x = tf.nn.depthwise_conv2d(x, kh, [1, 1, 1, 1], "VALID")
        return x[0]

    big_enough = tf.logical_and(shape[0] > radius, shape[1] > radius)
    return tf.cond(big_enough, blur, lambda: image)


def random_blur(image, prob: float, rng: RandomSource) -> tf.Tensor:
    """With probability ``prob``, Gaussian blur with sigma uniform in BLUR_SIGMA_RANGE."""
    image = _as_float_image(image)
    if prob <= 0:
        return image
    apply = rng.bernoulli(_TAG_BLUR_APPLY, prob)
    sigma = rng.uniform(_TAG_BLUR_SIGMA, *BLUR_SIGMA_RANGE)
    return tf.cond(apply, lambda: gaussian_blur(image, sigma), lambda: image)


def augment(
    image: tf.Tensor,
    label: tf.Tensor,
    crop_size: Sequence[int],
    pad_color: Sequence[float] = PAD_COLOR,
    min_scale: float = 0.5,
    max_scale: float = 2.0,
    hflip: bool = True,
    color_jitter: float = 0.25,
    blur_prob: float = 0.5,
    ignore_label: int = IGNORE_LABEL,
    seed: Optional[tf.Tensor] = None,
) -> tuple:
    """The full training augmentation of one example.

    Args:
      image: (H, W, 3) uint8 or float32 RGB in 0..255.
      label: (H, W) uint8 train ids.
      crop_size: (height, width) of the output.
      pad_color: RGB colour (0..255) of padded image pixels.
      seed: None for stateful random ops; a [2] int tensor for stateless, reproducible ones.

    Returns:
      ``(image float32 (crop_h, crop_w, 3) in 0..255, label uint8 (crop_h, crop_w))``.
    """
    if not (0 < min_scale <= max_scale):
        raise ValueError(f"need 0 < min_scale <= max_scale, got {min_scale}, {max_scale}")
    rng = RandomSource(seed)
    image, label = random_scale_and_crop(image, label, min_scale, max_scale, crop_size, rng)
    if hflip:
        image, label = random_flip(image, label, rng)
    image = random_color_jitter(image, color_jitter, rng)
    # The blur's float kernel sums to 1 only up to rounding: keep the model's 0..255 input contract exact.
    image = tf.clip_by_value(random_blur(image, blur_prob, rng), 0.0, 255.0)
    return pad_to_size(image, label, crop_size, pad_color, ignore_label, rng)


def pad_color_rgb(setting, backbone: Optional[str] = None) -> tuple:
    """``DataConfig.pad_color`` as an RGB tuple (0..255): "black", "mean" (``backbone``'s
    normalisation mean, so padding is 0 after normalisation) or an explicit [r, g, b]."""
    if isinstance(setting, str):
        if setting == "black":
            return PAD_COLOR
        if setting == "mean":
            if backbone is None:
                raise ValueError('data.pad_color "mean" needs the backbone name to find its mean colour')
            from gscnn_tf.backbones import normalization_for

            return tuple(float(v) for v in normalization_for(backbone)[0])
        raise ValueError(f'data.pad_color must be "black", "mean" or [r, g, b], got {setting!r}')
    return tuple(float(v) for v in setting)


def augment_from_config(image, label, data_config, seed=None, ignore_label: int = IGNORE_LABEL) -> tuple:
    """:func:`augment` with the fields of a :class:`gscnn_tf.config.DataConfig` and the
    dataset's ``ignore_label`` (``pad_color: mean`` must be resolved to RGB first, see
    :func:`pad_color_rgb`)."""
    return augment(
        image,
        label,
        crop_size=data_config.crop_size,
        pad_color=pad_color_rgb(data_config.pad_color),
        min_scale=data_config.min_scale,
        max_scale=data_config.max_scale,
        hflip=data_config.hflip,
        color_jitter=data_config.color_jitter,
        blur_prob=data_config.blur_prob,
        ignore_label=ignore_label,
        seed=seed,
    )


__all__ = [
    "RandomSource",
    "adjust_color",
    "augment",
    "augment_from_config",
    "gaussian_blur",
    "gaussian_kernel_1d",
    "pad_color_rgb",
    "pad_rgb",
    "pad_to_size",
    "random_blur",
    "random_color_jitter",
    "random_flip",
    "random_scale_and_crop",
    "scale_and_crop",
    "scale_image_and_label",
    "scaled_size",
]
