"""Dilated WideResNet-38 (type A2), the regular stream of the official Gated-SCNN release.

WideResNet-38 A2 (Wu, Shen and van den Hengel, "Wider or Deeper", 2016; the variant used by
the official Gated-SCNN Cityscapes model, see ``docs/OFFICIAL_CHECKPOINT.md``) is a
*pre-activation* residual network: every block starts with BN + ReLU, and the block output is
the bare residual sum (no BN or ReLU after the add)::

    y = BN-ReLU(x)
    out = convs(y) + (proj_conv(y) if the block changes stride or width else x)

``convs`` is two 3x3 convs (``conv1``, ``bn2``-ReLU, ``conv2``) in mod2..mod5 and a bottleneck
(1x1 ``conv1``, ``bn2``-ReLU, 3x3 ``conv2``, ``bn3``-ReLU, [dropout], 1x1 ``conv3``) in
mod6 and mod7. No conv has a bias. Layout, output stride 8 only:

=======  ======  ==================  =======  ========  =====================================
module   blocks  widths              stride   dilation  note
=======  ======  ==================  =======  ========  =====================================
mod1     -       64                  1        1         one 3x3 conv, no BN (tap ``stem``)
pool2    -       -                   2        -         3x3/2 max-pool, padded by 1 with -inf
mod2     3       128, 128            2        1         tap ``c2``
pool3    -       -                   4        -         as pool2
mod3     3       256, 256            4        1         tap ``c3``
mod4     6       512, 512            8        1         stride 2 in block1's first 3x3; ``c4``
mod5     3       512, 1024           8        2
mod6     1       512, 1024, 2048     8        4         spatial dropout 0.3 before conv3
mod7     1       1024, 2048, 4096    8        4         spatial dropout 0.5; tap ``c5``
=======  ======  ==================  =======  ========  =====================================

Every tap is a raw residual sum (channels in ``build_wider_resnet38``). Unlike the other backbones the
``stem`` tap has stride 1 (64 channels at full resolution) and ``c2`` stride 2, which is what
the official model's shape stream and decoder consume.

Padding is written out so that the grid matches PyTorch exactly at any input size: the
max-pools pad one pixel of -inf on every side (Keras' 'same' pads only bottom/right and the
taps can be negative), and the stride-2 3x3 conv pads one zero on every side before a
'valid' conv. Stride-1 convs use 'same' (symmetric for odd kernels).

Inputs are RGB normalised with ImageNet mean/std (``normalization_for("wrn38")``). There are
no ImageNet weights here: the network is meant to be loaded from the official Cityscapes
checkpoint (``gscnn_tf.checkpoint_import.official_pytorch``) or trained from scratch.
"""
from __future__ import annotations

import keras
from keras import ops

from gscnn_tf.layers import dilated_conv
from gscnn_tf.layers.normalization import batch_norm

# (blocks, widths, dilation, dropout) of mod2..mod7 at output stride 8.
WRN38_MODULES = (
    (3, (128, 128), 1, None),
    (3, (256, 256), 1, None),
    (6, (512, 512), 1, None),
    (3, (512, 1024), 2, None),
    (1, (512, 1024, 2048), 4, 0.3),
    (1, (1024, 2048, 4096), 4, 0.5),
)
# Module whose first block carries the network's only strided conv (stride 2).
_STRIDED_MODULE = 4
STEM_WIDTH = 64


@keras.saving.register_keras_serializable(package="gscnn_tf")
class SymmetricMaxPool2D(keras.layers.Layer):
    """3x3 stride-2 max-pool padded by ``padding`` pixels of -inf on every side.

    Input (B, H, W, C) -> (B, floor((H + 2p - k) / s) + 1, ..., C): PyTorch's
    ``MaxPool2d(k, stride=s, padding=p)``. Padding with -inf (not 0) keeps negative values
    at the border, as PyTorch does.
    """

    def __init__(self, pool_size=3, strides=2, padding=1, **kwargs):
        super().__init__(**kwargs)
        self.pool_size = int(pool_size)
        self.strides = int(strides)
        self.padding = int(padding)

    def call(self, x):
        p = self.padding
        x = ops.pad(x, [[0, 0], [p, p], [p, p], [0, 0]], constant_values=float("-inf"))
        return ops.max_pool(x, self.pool_size, self.strides, padding="valid")

    def compute_output_shape(self, input_shape):
        def out(n):
            return None if n is None else (n + 2 * self.padding - self.pool_size) // self.strides + 1

        return (input_shape[0], out(input_shape[1]), out(input_shape[2]), input_shape[3])

    def get_config(self):
        config = super().get_config()
        config.update(pool_size=self.pool_size, strides=self.strides, padding=self.padding)
        return config


def _conv(x, filters, kernel_size, name, stride=1, dilation=1):
    if stride > 1 and kernel_size > 1:
        # PyTorch pads (k - 1) // 2 on every side; 'same' would pad bottom/right only.
        pad = (kernel_size - 1) // 2
        x = keras.layers.ZeroPadding2D(pad, name=f"{name}_pad")(x)
        return keras.layers.Conv2D(filters, kernel_size, strides=stride, padding="valid", use_bias=False, name=name)(x)
    # dilated_conv.Conv2D: TensorFlow's native dilated kernels (mod5-mod7 are dilated 2 and 4).
    return dilated_conv.Conv2D(
        filters, kernel_size, strides=stride, padding="same", dilation_rate=dilation, use_bias=False, name=name
    )(x)


def _bn_relu(x, name, sync):
    x = batch_norm(name=name, sync=sync)(x)
    return keras.layers.ReLU(name=f"{name}_relu")(x)


def _block(x, widths, stride, dilation, dropout, name, sync):
    """One pre-activation (identity-mapping) residual block; see the module docstring."""
    in_channels = x.shape[-1]
    y = _bn_relu(x, f"{name}_bn1", sync)
    if stride != 1 or in_channels != widths[-1]:
        shortcut = _conv(y, widths[-1], 1, f"{name}_proj_conv", stride=stride)
    else:
        shortcut = x
    if len(widths) == 2:
        out = _conv(y, widths[0], 3, f"{name}_conv1", stride=stride, dilation=dilation)
        out = _bn_relu(out, f"{name}_bn2", sync)
        out = _conv(out, widths[1], 3, f"{name}_conv2", dilation=dilation)
    else:
        out = _conv(y, widths[0], 1, f"{name}_conv1", stride=stride)
        out = _bn_relu(out, f"{name}_bn2", sync)
        out = _conv(out, widths[1], 3, f"{name}_conv2", dilation=dilation)
        out = _bn_relu(out, f"{name}_bn3", sync)
        if dropout:
            out = keras.layers.SpatialDropout2D(dropout, name=f"{name}_dropout")(out)
        out = _conv(out, widths[2], 1, f"{name}_conv3")
    return keras.layers.Add(name=f"{name}_add")([out, shortcut])


def build_wider_resnet38(output_stride=8, sync_batchnorm="auto"):
    """Builds a randomly initialised dilated WideResNet-38 A2 feature extractor.

    Args:
        output_stride: must be 8 (the only layout of the official model).
        sync_batchnorm: passed to ``gscnn_tf.layers.normalization.batch_norm``.

    Returns:
        ``keras.Model``: image (B, H, W, 3) -> dict, each a raw residual sum:

        =====  ======  ======  ========
        key    source  stride  channels
        =====  ======  ======  ========
        stem   mod1    1       64
        c2     mod2    2       128
        c3     mod3    4       256
        c4     mod4    8       512
        c5     mod7    8       4096
        =====  ======  ======  ========

        (stride s: spatial size ceil(H / s) at every H, as PyTorch's padded pools/convs give.)

    Raises:
        ValueError: ``output_stride`` other than 8.
    """
    if output_stride != 8:
        raise ValueError(f"wrn38 is built at output stride 8 only (the official layout), got {output_stride!r}.")
    image = keras.Input(shape=(None, None, 3), name="image")
    x = _conv(image, STEM_WIDTH, 3, "mod1_conv1")
    taps = {"stem": x}
    for module, (blocks, widths, dilation, dropout) in enumerate(WRN38_MODULES, start=2):
        if module in (2, 3):
            x = SymmetricMaxPool2D(name=f"pool{module}")(x)
        for b in range(1, blocks + 1):
            stride = 2 if (module == _STRIDED_MODULE and b == 1) else 1
            x = _block(x, widths, stride, dilation, dropout, f"mod{module}_block{b}", sync_batchnorm)
        if module == 2:
            taps["c2"] = x
        elif module == 3:
            taps["c3"] = x
        elif module == 4:
            taps["c4"] = x
    taps["c5"] = x
    return keras.Model(image, taps, name=f"wrn38_os{output_stride}")
