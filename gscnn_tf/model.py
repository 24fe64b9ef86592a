"""``build_gscnn``: the Gated-SCNN network (docs/PAPER.md section 1, docs/ARCHITECTURE.md).

::

    image ──> backbone ──> stem, c2, c3, c4, c5
      │                     │    │   └──┴──┴── gates ─┐
      ├──> canny ──────────>│────┼───────────────> shape_stream ──> edge (output)
      │                     └────┼──────────────────────┘ shape map
      │                          │        c5 ──> aspp <──┘
      └──────────────────────────┴──────────────> decoder <── aspp  ──> seg_logits (output)

Input: ``image`` (B, H, W, 3) float32, normalised for the backbone. Outputs (dict, float32
even under a mixed-precision policy): ``seg_logits`` (B, H, W, num_classes) and ``edge``
(B, H, W, 1) edge probability (constant zeros with ``shape_stream=False``); with the shape
stream also ``edge_logits`` (B, H, W, 1), the edge's pre-sigmoid values, which the edge
BCE uses for a gradient that survives sigmoid saturation.

Input size: any H, W work and the outputs always have the input's size (every resolution
change resizes to a reference tensor), but feature grids are only pixel-aligned with the
image when H and W are multiples of the output stride (strided convs round odd sizes), so
the contract asks for multiples of 8 (16 at output stride 16) in training and evaluation.
"""
from __future__ import annotations

import keras

from gscnn_tf.backbones import build_backbone, normalization_for
from gscnn_tf.config import ModelConfig
from gscnn_tf.layers.aspp import ShapeAwareASPP, atrous_rates_for
from gscnn_tf.layers.decoder import DeepLabV3PlusDecoder
from gscnn_tf.layers.normalization import resolve_sync
from gscnn_tf.layers.shape_stream import ShapeStream, ZeroEdgeMap


def build_gscnn(model_config: ModelConfig, name: str = "gscnn") -> keras.Model:
    """Builds Gated-SCNN (or, with ``shape_stream=False``, the DeepLabV3+ baseline).

    Respects the current Keras dtype policy (e.g. ``mixed_float16``); outputs stay float32.
    ``sync_batchnorm="auto"`` is resolved once, here: synchronized BatchNorm everywhere when a
    tf.distribute strategy with more than one replica is active at build time.

    Raises:
        ValueError: unsupported output stride or backbone name.
    """
    cfg = model_config
    rates = atrous_rates_for(cfg.output_stride)
    sync = resolve_sync(cfg.sync_batchnorm)
    # Official-checkpoint compatibility (docs/OFFICIAL_CHECKPOINT.md): switches in the layers below.
    compat = bool(cfg.official_compat)

    image = keras.Input(shape=(None, None, 3), dtype="float32", name="image")
    backbone = build_backbone(
        cfg.backbone, cfg.output_stride, pretrained=cfg.pretrained, alpha=cfg.mobilenet_alpha,
        sync_batchnorm=sync,
    )
    features = backbone(image)

    if cfg.shape_stream:
        if cfg.canny:
            from gscnn_tf.layers.canny import CannyEdges

            mean, std = normalization_for(cfg.backbone)
            input_mode = "official_uint8_wrap" if compat else "rgb"
            reference = CannyEdges(cfg.canny_low, cfg.canny_high, mean, std, input_mode=input_mode, name="canny")(image)
        else:
            reference = image
        edge, shape_map, edge_logits = ShapeStream(
            gated=cfg.gated, use_canny=cfg.canny, sync_batchnorm=sync, align_corners=compat, name="shape_stream"
        )(
            [features["stem"], features["c3"], features["c4"], features["c5"], reference]
        )
        aspp_inputs = [features["c5"], shape_map]
    else:
        edge = ZeroEdgeMap(name="no_shape_stream")(image)
        aspp_inputs = features["c5"]

    aspp = ShapeAwareASPP(
        filters=cfg.aspp_filters, atrous_rates=rates, use_shape=cfg.shape_stream, sync_batchnorm=sync,
        project_norm_act=not compat, align_corners=compat, name="aspp",
    )(aspp_inputs)
    logits = DeepLabV3PlusDecoder(
        cfg.num_classes, filters=cfg.decoder_filters, low_level_filters=cfg.low_level_filters,
        sync_batchnorm=sync, low_level_norm_act=not compat, classifier_bias=not compat, align_corners=compat,
        name="decoder",
    )([aspp, features["c2"], image])

    outputs = {
        "seg_logits": keras.layers.Activation("linear", dtype="float32", name="seg_logits")(logits),
        "edge": keras.layers.Activation("linear", dtype="float32", name="edge")(edge),
    }
    if cfg.shape_stream:
        # The edge BCE is computed from these (same value as BCE on ``edge``, but its gradient
        # does not vanish where float32's sigmoid saturates to exactly 0 or 1).
        outputs["edge_logits"] = keras.layers.Activation("linear", dtype="float32", name="edge_logits")(edge_logits)
    return keras.Model(image, outputs, name=name)
