"""gscnn_tf.layers: the Gated-SCNN building blocks.

Importing this package registers every custom layer for ``.keras`` deserialisation.
"""
from gscnn_tf.layers.aspp import ShapeAwareASPP, atrous_rates_for
from gscnn_tf.layers.canny import CannyEdges
from gscnn_tf.layers.decoder import DeepLabV3PlusDecoder
from gscnn_tf.layers.gated_conv import GatedConv2D
from gscnn_tf.layers.image_preprocessing import RGBImageNormalization
from gscnn_tf.layers.normalization import batch_norm, resolve_sync
from gscnn_tf.layers.residual_block import BasicBlock
from gscnn_tf.layers.resize import ResizeToReference, resize_like
from gscnn_tf.layers.shape_stream import ShapeStream, ZeroEdgeMap

__all__ = [
    "BasicBlock",
    "CannyEdges",
    "DeepLabV3PlusDecoder",
    "GatedConv2D",
    "RGBImageNormalization",
    "ResizeToReference",
    "ShapeAwareASPP",
    "ShapeStream",
    "ZeroEdgeMap",
    "atrous_rates_for",
    "batch_norm",
    "resize_like",
    "resolve_sync",
]
