"""Fusion module (paper section 3.2): ASPP with an image-pooling and a shape branch.

On the deepest regular-stream map, ``filters`` channels per branch, each conv-BN-ReLU
(convs without bias)::

    pool   global average -> 1x1 -> BN -> ReLU -> broadcast to the feature grid
    shape  shape map resized to the feature grid -> 1x1 (1 -> filters) -> BN -> ReLU
    conv1x1, atrous{rate} 3x3 with dilation rate for each of ``atrous_rates``
    concat (branch order as the official code: pool, shape, 1x1, atrous) -> project 1x1 -> BN -> ReLU

Rates: (12, 24, 36) at output stride 8, (6, 12, 18) at 16 (:func:`atrous_rates_for`).
Official-checkpoint compatibility (``model.official_compat``): ``project_norm_act=False``
makes ``project`` a plain 1x1 conv (no bias, BN or ReLU; the official code's ``bot_aspp``)
and ``align_corners=True`` resizes the shape map with aligned corners.
With ``use_shape=False`` there is no shape branch: plain DeepLabV3+ ASPP (the baseline).
"""
from __future__ import annotations

import keras
from keras import ops

from gscnn_tf.layers import dilated_conv
from gscnn_tf.layers.normalization import batch_norm
from gscnn_tf.layers.resize import resize_like

ATROUS_RATES = {8: (12, 24, 36), 16: (6, 12, 18)}


def atrous_rates_for(output_stride: int) -> tuple:
    """ASPP dilation rates for a backbone output stride (DeepLabV3 convention)."""
    if output_stride not in ATROUS_RATES:
        raise ValueError(f"output_stride must be one of {sorted(ATROUS_RATES)}, got {output_stride}")
    return ATROUS_RATES[output_stride]


def conv_bn_relu(filters, kernel_size, name, sync_batchnorm, dtype, dilation_rate=1):
    """A conv (no bias) -> BN -> ReLU stack as a ``keras.Sequential`` named ``name``."""
    return keras.Sequential(
        [
            dilated_conv.Conv2D(
                filters, kernel_size, padding="same", dilation_rate=dilation_rate, use_bias=False,
                name="conv", dtype=dtype,
            ),
            batch_norm(name="bn", sync=sync_batchnorm, dtype=dtype),
            keras.layers.ReLU(name="relu", dtype=dtype),
        ],
        name=name,
    )


@keras.saving.register_keras_serializable(package="gscnn_tf")
class ShapeAwareASPP(keras.layers.Layer):
    """Atrous spatial pyramid pooling with image pooling and (optionally) the shape map.

    Call: ``layer([features, shape_map])`` if ``use_shape`` else ``layer(features)``
        features: (B, h, w, C) deepest backbone map; shape_map: (B, H, W, 1) any size.
    Returns: (B, h, w, filters).
    """

    def __init__(
        self, filters=256, atrous_rates=(12, 24, 36), use_shape=True, sync_batchnorm="auto",
        project_norm_act=True, align_corners=False, **kwargs,
    ):
        super().__init__(**kwargs)
        self.project_norm_act = bool(project_norm_act)
        self.align_corners = bool(align_corners)
        self.filters = int(filters)
        self.atrous_rates = tuple(int(r) for r in atrous_rates)
        self.use_shape = bool(use_shape)
        self.sync_batchnorm = sync_batchnorm

    def build(self, input_shape):
        features_shape = input_shape[0] if self.use_shape else input_shape
        if self.use_shape and (len(input_shape) != 2 or input_shape[1][-1] != 1):
            raise ValueError(f"{self.name}: expected [features, shape_map (B,H,W,1)], got {input_shape}")
        policy = self.dtype_policy

        def branch(name, kernel_size=1, rate=1):
            return conv_bn_relu(self.filters, kernel_size, name, self.sync_batchnorm, policy, dilation_rate=rate)

        self.pool_branch = branch("pool")
        self.pool_branch.build((features_shape[0], 1, 1, features_shape[-1]))
        self.shape_branch = None
        if self.use_shape:
            self.shape_branch = branch("shape")
            self.shape_branch.build((None, None, None, 1))
        self.conv1x1_branch = branch("conv1x1")
        self.conv1x1_branch.build(features_shape)
        self.atrous_branches = []
        for rate in self.atrous_rates:
            atrous = branch(f"atrous{rate}", kernel_size=3, rate=rate)
            atrous.build(features_shape)
            self.atrous_branches.append(atrous)
        if self.project_norm_act:
            self.project = branch("project")
        else:
            self.project = keras.layers.Conv2D(self.filters, 1, use_bias=False, name="project", dtype=policy)
        n_branches = 2 + len(self.atrous_rates) + int(self.use_shape)
        self.project.build((None, None, None, n_branches * self.filters))

    def call(self, inputs, training=None):
        if self.use_shape:
            features, shape_map = inputs
        else:
            features, shape_map = inputs, None
        dtype = self.compute_dtype
        pooled = ops.mean(features, axis=(1, 2), keepdims=True)
        branches = [resize_like(self.pool_branch(pooled, training=training), features, dtype=dtype)]
        if self.use_shape:
            shape_map = resize_like(shape_map, features, dtype=dtype, align_corners=self.align_corners)
            branches.append(self.shape_branch(shape_map, training=training))
        branches.append(self.conv1x1_branch(features, training=training))
        branches.extend(atrous(features, training=training) for atrous in self.atrous_branches)
        return self.project(ops.concatenate(branches, axis=-1), training=training)

    def compute_output_shape(self, input_shape):
        features_shape = input_shape[0] if self.use_shape else input_shape
        return tuple(features_shape[:-1]) + (self.filters,)

    def get_config(self):
        config = super().get_config()
        config.update(
            filters=self.filters, atrous_rates=list(self.atrous_rates), use_shape=self.use_shape,
            sync_batchnorm=self.sync_batchnorm, project_norm_act=self.project_norm_act,
            align_corners=self.align_corners,
        )
        return config
