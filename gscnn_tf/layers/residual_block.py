"""ResNet BasicBlock: the residual blocks ``res1..res3`` of the shape stream.

Same as torchvision's ``BasicBlock(C, C, stride=1)`` used by the official code:
conv3x3-BN-ReLU-conv3x3-BN, identity shortcut, ReLU. Width follows the input, so the
block keeps the channel count (64, 32, 16 in the shape stream).
"""
from __future__ import annotations

import keras
from keras import ops

from gscnn_tf.layers.normalization import batch_norm


@keras.saving.register_keras_serializable(package="gscnn_tf")
class BasicBlock(keras.layers.Layer):
    """Two 3x3 convs with an identity shortcut.

    Input: (B, H, W, C). Output: (B, H, W, C), ``relu(x + bn2(conv2(relu(bn1(conv1(x))))))``.

    Args:
        sync_batchnorm: passed to :func:`gscnn_tf.layers.normalization.batch_norm`.
    """

    def __init__(self, sync_batchnorm="auto", **kwargs):
        super().__init__(**kwargs)
        self.sync_batchnorm = sync_batchnorm
        self.conv1 = None

    def build(self, input_shape):
        channels = input_shape[-1]
        if channels is None:
            raise ValueError(f"{self.name}: the channel dimension must be known, got {input_shape}")
        conv = dict(kernel_size=3, padding="same", use_bias=False, dtype=self.dtype_policy)
        self.conv1 = keras.layers.Conv2D(channels, name="conv1", **conv)
        self.bn1 = batch_norm(name="bn1", sync=self.sync_batchnorm, dtype=self.dtype_policy)
        self.conv2 = keras.layers.Conv2D(channels, name="conv2", **conv)
        self.bn2 = batch_norm(name="bn2", sync=self.sync_batchnorm, dtype=self.dtype_policy)
        for layer in (self.conv1, self.bn1, self.conv2, self.bn2):
            layer.build(input_shape)

    def call(self, x, training=None):
        y = ops.relu(self.bn1(self.conv1(x), training=training))
        y = self.bn2(self.conv2(y), training=training)
        return ops.relu(x + y)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config["sync_batchnorm"] = self.sync_batchnorm
        return config
