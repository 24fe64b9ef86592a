"""gscnn_tf.backbones: dilated ResNet-50/101, MobileNetV2 and WideResNet-38 regular streams.

:func:`build_backbone` (in :mod:`.factory`) builds one by name; each architecture has its own module.
"""
from gscnn_tf.backbones.factory import (
    BACKBONES,
    OUTPUT_STRIDES,
    build_backbone,
    count_params,
    load_pretrained,
    normalization_for,
)

__all__ = ["BACKBONES", "OUTPUT_STRIDES", "build_backbone", "count_params", "load_pretrained", "normalization_for"]
