"""DeepLabV3+ decoder (docs/PAPER.md section 1): fuses ASPP output with low-level features.

::

    low_level  c2 -> 1x1 -> low_level_filters (48) -> BN -> ReLU
    concat(low_level, ASPP output upsampled to c2's grid)       (official order: fine first)
    refine1, refine2  3x3 conv -> BN -> ReLU, ``filters`` (256)
    classifier 1x1 -> num_classes (with bias), upsampled bilinearly to the image size

Official-checkpoint compatibility (``model.official_compat``): ``low_level_norm_act=False``
(plain 1x1 conv without bias, BN or ReLU), ``classifier_bias=False`` and ``align_corners=True``
for the ASPP upsampling (the final upsampling stays half-pixel, as in the official code).
"""
from __future__ import annotations

import keras
from keras import ops

from gscnn_tf.layers.aspp import conv_bn_relu
from gscnn_tf.layers.resize import resize_like


@keras.saving.register_keras_serializable(package="gscnn_tf")
class DeepLabV3PlusDecoder(keras.layers.Layer):
    """Decoder head producing full-resolution segmentation logits.

    Call: ``layer([aspp_features, low_level, reference])``
        aspp_features: (B, h, w, A); low_level: (B, H/4, W/4, L) (c2);
        reference: (B, H, W, any) (the image; only its H, W are used).
    Returns: (B, H, W, num_classes) logits in the layer's compute dtype.
    """

    def __init__(
        self, num_classes, filters=256, low_level_filters=48, sync_batchnorm="auto",
        low_level_norm_act=True, classifier_bias=True, align_corners=False, **kwargs,
    ):
        super().__init__(**kwargs)
        self.low_level_norm_act = bool(low_level_norm_act)
        self.classifier_bias = bool(classifier_bias)
        self.align_corners = bool(align_corners)
        self.num_classes = int(num_classes)
        self.filters = int(filters)
        self.low_level_filters = int(low_level_filters)
        self.sync_batchnorm = sync_batchnorm

    def build(self, input_shape):
        aspp_shape, low_level_shape, _ = input_shape
        policy = self.dtype_policy
        if self.low_level_norm_act:
            self.low_level = conv_bn_relu(self.low_level_filters, 1, "low_level", self.sync_batchnorm, policy)
        else:
            self.low_level = keras.layers.Conv2D(self.low_level_filters, 1, use_bias=False, name="low_level", dtype=policy)
        self.low_level.build(low_level_shape)
        self.refine1 = conv_bn_relu(self.filters, 3, "refine1", self.sync_batchnorm, policy)
        self.refine1.build((None, None, None, self.low_level_filters + aspp_shape[-1]))
        self.refine2 = conv_bn_relu(self.filters, 3, "refine2", self.sync_batchnorm, policy)
        self.refine2.build((None, None, None, self.filters))
        self.classifier = keras.layers.Conv2D(
            self.num_classes, 1, use_bias=self.classifier_bias, name="classifier", dtype=policy
        )
        self.classifier.build((None, None, None, self.filters))

    def call(self, inputs, training=None):
        aspp_features, low_level, reference = inputs
        fine = self.low_level(low_level, training=training)
        coarse = resize_like(aspp_features, fine, dtype=self.compute_dtype, align_corners=self.align_corners)
        x = ops.concatenate([fine, coarse], axis=-1)
        x = self.refine2(self.refine1(x, training=training), training=training)
        return resize_like(self.classifier(x), reference, dtype=self.compute_dtype)

    def compute_output_shape(self, input_shape):
        reference_shape = input_shape[2]
        return (reference_shape[0], reference_shape[1], reference_shape[2], self.num_classes)

    def get_config(self):
        config = super().get_config()
        config.update(
            num_classes=self.num_classes, filters=self.filters, low_level_filters=self.low_level_filters,
            sync_batchnorm=self.sync_batchnorm, low_level_norm_act=self.low_level_norm_act,
            classifier_bias=self.classifier_bias, align_corners=self.align_corners,
        )
        return config
