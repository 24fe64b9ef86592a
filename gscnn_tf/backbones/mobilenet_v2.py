"""Dilated MobileNetV2, the CPU demo backbone.

Same topology and layer names as ``keras.applications.MobileNetV2`` (inverted residual
blocks ``block_{i}_*``, ReLU6, BN epsilon 1e-3), so its ImageNet weights
transfer layer by layer by name. The final ``Conv_1`` (1x1 -> 1280) is not built: ``c5``
is the last inverted-residual output, as in DeepLabV3's MobileNetV2 feature extractor,
which keeps the ASPP input small (320 ch instead of 1280).

Keras 3 refuses ``strides > 1`` together with ``dilation_rate > 1``. Dilation follows the
"a trous" rule, so the dilated network is an exact dense evaluation of the undilated one:
a dilated stage's stride-2 depthwise conv (``block_6_depthwise`` or ``block_13_depthwise``)
runs at stride 1 with 'same' padding (its ``*_pad`` ZeroPadding layer is dropped) and
keeps the dilation that was in force before the stage; every later depthwise conv gets
the stage's new dilation (2 at OS16; 2 then 4 at OS8). Weights are unchanged. Because
keras.applications' stride-2 window for even sizes is centred on odd pixels, the dilated
maps sampled at ``[1::2]`` (one dilated stage) or ``[3::4]`` (two) equal the undilated
ones exactly (tested). The residual-add pattern is that of the undilated network (a
block whose stride became 1 still has no shortcut), so the layer set is identical.

Feature taps (input H x W; channels for alpha = 1, otherwise scaled as keras.applications
does, ``_make_divisible(c * alpha, 8)``):

=====  ========================  ========  =====  ==========  ==========
key    layer                     channels  OS32   OS16        OS8
=====  ========================  ========  =====  ==========  ==========
stem   ``Conv1_relu``            32        /2     /2          /2
c2     ``block_2_add``           24        /4     /4          /4
c3     ``block_5_add``           32        /8     /8          /8
c4     ``block_12_add``          96        /16    /16         /8 (d=2)
c5     ``block_16_project_BN``   320       /32    /16 (d=2)   /8 (d=4)
=====  ========================  ========  =====  ==========  ==========

Inputs are RGB scaled to [-1, 1] (``normalization_for("mobilenetv2")``: 127.5 / 127.5).
"""
from __future__ import annotations

import keras

from gscnn_tf.layers import dilated_conv
from gscnn_tf.layers.normalization import BN_MOMENTUM, batch_norm

MOBILENET_BN_EPSILON = 1e-3
# BN momentum is a training hyper-parameter, not part of the weights: Keras' MobileNetV2 uses
# 0.999, which leaves the moving statistics near their initial values for thousands of steps
# (a short fine-tune or the CPU demo evaluates garbage). We use the package-wide 0.9
# (PyTorch's 0.1), as the official Gated-SCNN recipe does for every BN.
MOBILENET_BN_MOMENTUM = BN_MOMENTUM

# (output filters, stride, expansion) of blocks 0..16 (keras.applications' table).
INVERTED_RESIDUAL_BLOCKS = (
    (16, 1, 1),
    (24, 2, 6), (24, 1, 6),
    (32, 2, 6), (32, 1, 6), (32, 1, 6),
    (64, 2, 6), (64, 1, 6), (64, 1, 6), (64, 1, 6),
    (96, 1, 6), (96, 1, 6), (96, 1, 6),
    (160, 2, 6), (160, 1, 6), (160, 1, 6),
    (320, 1, 6),
)
STRIDE16_FIRST_BLOCK = 6  # blocks 6..12 run at stride 16 undilated
STRIDE32_FIRST_BLOCK = 13  # blocks 13..16 run at stride 32 undilated

# Dilation of the (stride-16 stage, stride-32 stage) per output stride.
STAGE_DILATIONS = {32: (1, 1), 16: (1, 2), 8: (2, 4)}

# Block whose output is tapped (block_2_add, block_5_add, block_12_add, block_16_project_BN).
TAP_BLOCKS = {"c2": 2, "c3": 5, "c4": 12, "c5": 16}


def make_divisible(value, divisor=8, min_value=None):
    """keras.applications' channel rounding for the width multiplier."""
    min_value = divisor if min_value is None else min_value
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:  # never round down by more than 10 %
        rounded += divisor
    return rounded


def _bn(name, sync):
    return batch_norm(name=name, sync=sync, momentum=MOBILENET_BN_MOMENTUM, epsilon=MOBILENET_BN_EPSILON)


def _inverted_residual(inputs, filters, stride, expansion, alpha, dilation, block_id, sync):
    """keras.applications' ``_inverted_res_block``; ``dilation`` is that of the depthwise conv.

    ``dilation=None`` with ``stride=2`` keeps the stride-2 conv; an int turns it to stride 1.
    """
    in_channels = inputs.shape[-1]
    pointwise_filters = make_divisible(int(filters * alpha), 8)
    prefix = f"block_{block_id}_" if block_id else "expanded_conv_"
    x = inputs
    if block_id:
        x = keras.layers.Conv2D(expansion * in_channels, 1, padding="same", use_bias=False,
                                name=f"{prefix}expand")(x)
        x = _bn(f"{prefix}expand_BN", sync)(x)
        x = keras.layers.ReLU(6.0, name=f"{prefix}expand_relu")(x)
    effective_stride = stride if dilation is None else 1
    dilation = dilation or 1
    if effective_stride == 2:
        # keras.applications' correct_pad for even (or unknown) sizes: ((0, 1), (0, 1)).
        x = keras.layers.ZeroPadding2D(padding=((0, 1), (0, 1)), name=f"{prefix}pad")(x)
    x = dilated_conv.DepthwiseConv2D(3, strides=effective_stride, dilation_rate=dilation, use_bias=False,
                                     padding="valid" if effective_stride == 2 else "same",
                                     name=f"{prefix}depthwise")(x)
    x = _bn(f"{prefix}depthwise_BN", sync)(x)
    x = keras.layers.ReLU(6.0, name=f"{prefix}depthwise_relu")(x)
    x = keras.layers.Conv2D(pointwise_filters, 1, padding="same", use_bias=False, name=f"{prefix}project")(x)
    x = _bn(f"{prefix}project_BN", sync)(x)
    # The shortcut follows the undilated topology (original stride), so layer sets match.
    if in_channels == pointwise_filters and stride == 1:
        return keras.layers.Add(name=f"{prefix}add")([inputs, x])
    return x


def _depthwise_dilations(output_stride):
    """Per block: the depthwise dilation, or None for a stride-2 conv that keeps its stride."""
    d16, d32 = STAGE_DILATIONS[output_stride]
    dilations = []
    rate = 1
    for block_id, (_, stride, _) in enumerate(INVERTED_RESIDUAL_BLOCKS):
        target = d32 if block_id >= STRIDE32_FIRST_BLOCK else d16 if block_id >= STRIDE16_FIRST_BLOCK else 1
        if stride == 2 and target > 1:
            dilations.append(rate)  # stride 2 -> 1; this conv keeps the rate in force so far
            rate = target
        elif stride == 2:
            dilations.append(None)
        else:
            dilations.append(rate)
    return dilations


def build_mobilenet_v2(output_stride=8, alpha=1.0, sync_batchnorm="auto"):
    """Builds a randomly initialised dilated MobileNetV2 feature extractor.

    Args:
        output_stride: 8, 16 or 32 (stride of ``c5``).
        alpha: width multiplier (keras.applications' ``alpha``).
        sync_batchnorm: passed to ``gscnn_tf.layers.normalization.batch_norm``.

    Returns:
        ``keras.Model``: image (B, H, W, 3) -> dict ``stem`` (B, H/2, W/2, 32), ``c2``
        (B, H/4, W/4, 24), ``c3`` (H/8, 32), ``c4`` (96), ``c5`` (320) for alpha = 1
        (strides and channels in the module docstring).
    """
    if output_stride not in STAGE_DILATIONS:
        raise ValueError(f"output_stride must be one of {sorted(STAGE_DILATIONS)}, got {output_stride!r}.")
    if not alpha > 0:
        raise ValueError(f"MobileNetV2 alpha must be > 0, got {alpha!r}.")
    depthwise_dilations = _depthwise_dilations(output_stride)

    image = keras.Input(shape=(None, None, 3), name="image")
    x = keras.layers.Conv2D(make_divisible(32 * alpha, 8), 3, strides=2, padding="same", use_bias=False,
                            name="Conv1")(image)
    x = _bn("bn_Conv1", sync_batchnorm)(x)
    x = keras.layers.ReLU(6.0, name="Conv1_relu")(x)
    stem = x
    block_outputs = []
    for block_id, (filters, stride, expansion) in enumerate(INVERTED_RESIDUAL_BLOCKS):
        x = _inverted_residual(x, filters, stride, expansion, alpha, depthwise_dilations[block_id], block_id,
                               sync_batchnorm)
        block_outputs.append(x)
    outputs = {"stem": stem}
    outputs.update({key: block_outputs[block_id] for key, block_id in TAP_BLOCKS.items()})
    return keras.Model(image, outputs, name=f"mobilenetv2_{alpha:g}_os{output_stride}")


def keras_application(weights, alpha=1.0):
    """The matching ``keras.applications.MobileNetV2`` (no top), used as the weight source."""
    return keras.applications.MobileNetV2(include_top=False, weights=weights, alpha=alpha,
                                          input_shape=(None, None, 3))
