"""Dilated ResNet-50 / ResNet-101 (v1), the paper's regular stream.

Same topology and layer names as ``keras.applications.ResNet50`` / ``ResNet101`` (v1:
bias in every conv, stride in the first 1x1 conv of a stage and in its projection
shortcut, BN epsilon 1.001e-5), so their ImageNet weights transfer layer by layer by name.

Keras 3 ``Conv2D`` refuses ``strides > 1`` together with ``dilation_rate > 1``. A dilated
stage therefore has its stride-2 convs (``*_block1_1_conv`` and ``*_block1_0_conv``, both
1x1) turned to stride 1, and every 3x3 conv of the stage (``*_block{i}_2_conv``, 'same'
padding) gets the stage's dilation. Weights are unchanged. Because the stride sits in
the 1x1 convs that precede every 3x3 of the stage, this is the exact "a trous" dense
evaluation of the undilated network: the dilated ``c5`` sampled at ``[::2]`` (OS16) or
``[::4]`` (OS8) equals the undilated one (tested). (torchvision keeps the previous rate
in a dilated stage's first block because its ResNet has the stride in the 3x3 conv.)

Feature taps (input H x W, channels):

=====  =====================  ========  =========  ==========  ==========
key    layer                  channels  OS32       OS16        OS8
=====  =====================  ========  =========  ==========  ==========
stem   ``conv1_relu``         64        /2         /2          /2
c2     ``conv2_block3_out``   256       /4         /4          /4
c3     ``conv3_block4_out``   512       /8         /8          /8
c4     ``conv4_blockN_out``   1024      /16        /16         /8 (d=2)
c5     ``conv5_block3_out``   2048      /32        /16 (d=2)   /8 (d=4)
=====  =====================  ========  =========  ==========  ==========

(N = 6 for ResNet-50, 23 for ResNet-101.) ``stem`` is taken after conv1+BN+ReLU, before
the max-pool. Inputs are RGB normalised with ``normalization_for`` (Caffe means, std 1);
when Keras' BGR ImageNet weights load, ``conv1_conv``'s kernel is flipped to RGB (see
``gscnn_tf.backbones.load_pretrained``).
"""
from __future__ import annotations

import keras

from gscnn_tf.layers import dilated_conv
from gscnn_tf.layers.normalization import BN_MOMENTUM, batch_norm

# keras.applications' ResNet BN epsilon; the ImageNet moving variances were fitted with it.
RESNET_BN_EPSILON = 1.001e-5

# Number of bottleneck blocks in conv2..conv5.
RESNET_DEPTHS = {
    "resnet50": (3, 4, 6, 3),
    "resnet101": (3, 4, 23, 3),
}

# Stage dilations (conv4, conv5) per output stride; a dilated stage runs at stride 1.
STAGE_DILATIONS = {32: (1, 1), 16: (1, 2), 8: (2, 4)}


def _bn(name, sync):
    return batch_norm(name=name, sync=sync, momentum=BN_MOMENTUM, epsilon=RESNET_BN_EPSILON)


def _bottleneck(x, filters, stride, dilation, conv_shortcut, name, sync):
    """keras.applications' ``residual_block_v1`` with a dilation option for the 3x3 conv."""
    if conv_shortcut:
        shortcut = keras.layers.Conv2D(4 * filters, 1, strides=stride, name=f"{name}_0_conv")(x)
        shortcut = _bn(f"{name}_0_bn", sync)(shortcut)
    else:
        shortcut = x
    x = keras.layers.Conv2D(filters, 1, strides=stride, name=f"{name}_1_conv")(x)
    x = _bn(f"{name}_1_bn", sync)(x)
    x = keras.layers.Activation("relu", name=f"{name}_1_relu")(x)
    x = dilated_conv.Conv2D(filters, 3, padding="same", dilation_rate=dilation, name=f"{name}_2_conv")(x)
    x = _bn(f"{name}_2_bn", sync)(x)
    x = keras.layers.Activation("relu", name=f"{name}_2_relu")(x)
    x = keras.layers.Conv2D(4 * filters, 1, name=f"{name}_3_conv")(x)
    x = _bn(f"{name}_3_bn", sync)(x)
    x = keras.layers.Add(name=f"{name}_add")([shortcut, x])
    return keras.layers.Activation("relu", name=f"{name}_out")(x)


def _stage(x, filters, blocks, stride, dilation, name, sync):
    """A stage; when dilated, its stride-2 convs run at stride 1 (see module docstring)."""
    stride = 1 if dilation > 1 else stride
    x = _bottleneck(x, filters, stride, dilation, True, f"{name}_block1", sync)
    for i in range(2, blocks + 1):
        x = _bottleneck(x, filters, 1, dilation, False, f"{name}_block{i}", sync)
    return x


def build_resnet(name="resnet50", output_stride=8, sync_batchnorm="auto"):
    """Builds a randomly initialised dilated ResNet-50/101 feature extractor.

    Args:
        name: ``"resnet50"`` or ``"resnet101"``.
        output_stride: 8, 16 or 32 (stride of ``c5``).
        sync_batchnorm: passed to ``gscnn_tf.layers.normalization.batch_norm``.

    Returns:
        ``keras.Model``: image (B, H, W, 3) -> dict ``stem`` (B, H/2, W/2, 64), ``c2``
        (B, H/4, W/4, 256), ``c3`` (H/8, 512), ``c4`` (1024), ``c5`` (2048) (strides in the
        module docstring).
    """
    if name not in RESNET_DEPTHS:
        raise ValueError(f"Unknown ResNet {name!r}; expected one of {sorted(RESNET_DEPTHS)}.")
    if output_stride not in STAGE_DILATIONS:
        raise ValueError(f"output_stride must be one of {sorted(STAGE_DILATIONS)}, got {output_stride!r}.")
    depths = RESNET_DEPTHS[name]
    d4, d5 = STAGE_DILATIONS[output_stride]

    image = keras.Input(shape=(None, None, 3), name="image")
    x = keras.layers.ZeroPadding2D(padding=((3, 3), (3, 3)), name="conv1_pad")(image)
    x = keras.layers.Conv2D(64, 7, strides=2, name="conv1_conv")(x)
    x = _bn("conv1_bn", sync_batchnorm)(x)
    stem = keras.layers.Activation("relu", name="conv1_relu")(x)
    x = keras.layers.ZeroPadding2D(padding=((1, 1), (1, 1)), name="pool1_pad")(stem)
    x = keras.layers.MaxPooling2D(3, strides=2, name="pool1_pool")(x)
    c2 = _stage(x, 64, depths[0], 1, 1, "conv2", sync_batchnorm)
    c3 = _stage(c2, 128, depths[1], 2, 1, "conv3", sync_batchnorm)
    c4 = _stage(c3, 256, depths[2], 2, d4, "conv4", sync_batchnorm)
    c5 = _stage(c4, 512, depths[3], 2, d5, "conv5", sync_batchnorm)
    outputs = {"stem": stem, "c2": c2, "c3": c3, "c4": c4, "c5": c5}
    return keras.Model(image, outputs, name=f"{name}_os{output_stride}")


def keras_application(name, weights):
    """The matching ``keras.applications`` model (no top), used as the weight source."""
    fn = {"resnet50": keras.applications.ResNet50, "resnet101": keras.applications.ResNet101}[name]
    return fn(include_top=False, weights=weights, input_shape=(None, None, 3))
