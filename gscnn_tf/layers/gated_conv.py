"""Gated convolutional layer (GCL), paper section 3.1 / docs/PAPER.md section 1.

The gate lets the regular stream tell the shape stream where to look: an attention map
alpha computed from the shape features s and the regular-stream gate signal r re-weights
s before a 1x1 convolution::

    alpha = sigmoid(BN(conv1x1(relu(conv1x1(BN(concat(s, r)))))))   # C+1 -> C+1 -> 1
    out   = conv1x1_no_bias(s * (alpha + 1))

``alpha + 1`` (rather than ``alpha``) keeps a residual path, so a closed gate does not
erase the features (official ``GatedSpatialConv2d``).
"""
from __future__ import annotations

import keras
from keras import ops

from gscnn_tf.layers.normalization import batch_norm


@keras.saving.register_keras_serializable(package="gscnn_tf")
class GatedConv2D(keras.layers.Layer):
    """GCL: gated 1x1 convolution of shape features by a one-channel gate signal.

    Call: ``layer([s, r])``
        s: (B, H, W, C) shape-stream features; r: (B, H, W, 1) gate signal (same H, W).
    Returns: (B, H, W, filters); ``filters`` defaults to C (as in the paper).

    Sub-layers (names appear in weights): ``input_bn`` (C+1), ``attention_hidden``
    (1x1, C+1 -> C+1, bias), ``attention_out`` (1x1, C+1 -> 1, bias), ``attention_bn`` (1),
    ``output_conv`` (1x1, C -> filters, no bias).
    """

    def __init__(self, filters=None, sync_batchnorm="auto", **kwargs):
        super().__init__(**kwargs)
        self.filters = filters
        self.sync_batchnorm = sync_batchnorm

    def build(self, input_shape):
        s_shape, r_shape = input_shape
        channels = s_shape[-1]
        if channels is None or r_shape[-1] != 1:
            raise ValueError(
                f"{self.name}: expected features (B,H,W,C) with known C and a gate (B,H,W,1); "
                f"got {s_shape} and {r_shape}"
            )
        filters = self.filters or channels
        policy = self.dtype_policy
        self.input_bn = batch_norm(name="input_bn", sync=self.sync_batchnorm, dtype=policy)
        self.attention_hidden = keras.layers.Conv2D(channels + 1, 1, name="attention_hidden", dtype=policy)
        self.attention_out = keras.layers.Conv2D(1, 1, name="attention_out", dtype=policy)
        self.attention_bn = batch_norm(name="attention_bn", sync=self.sync_batchnorm, dtype=policy)
        self.output_conv = keras.layers.Conv2D(filters, 1, use_bias=False, name="output_conv", dtype=policy)
        joint = tuple(s_shape[:-1]) + (channels + 1,)
        self.input_bn.build(joint)
        self.attention_hidden.build(joint)
        self.attention_out.build(joint)
        self.attention_bn.build(tuple(s_shape[:-1]) + (1,))
        self.output_conv.build(s_shape)

    def gate(self, features, gate_signal, training=None):
        """The attention map alpha, (B, H, W, 1) in [0, 1]."""
        joint = ops.concatenate([features, gate_signal], axis=-1)
        hidden = ops.relu(self.attention_hidden(self.input_bn(joint, training=training)))
        return ops.sigmoid(self.attention_bn(self.attention_out(hidden), training=training))

    def call(self, inputs, training=None):
        features, gate_signal = inputs
        alpha = self.gate(features, gate_signal, training=training)
        return self.output_conv(features * (alpha + 1.0))

    def compute_output_shape(self, input_shape):
        s_shape = input_shape[0]
        return tuple(s_shape[:-1]) + (self.filters or s_shape[-1],)

    def get_config(self):
        config = super().get_config()
        config.update(filters=self.filters, sync_batchnorm=self.sync_batchnorm)
        return config
