"""Shape stream (paper section 3.1, docs/PAPER.md section 1): the boundary-only branch.

Runs at full input resolution (as the official code). Data flow, channels in brackets::

    stem (stride 2) -> [1x1 -> 64 if the backbone's stem is not 64 wide] -> upsample to H, W
      res1 BasicBlock(64) -> d1 1x1 64->32 -> gate1 GCL(c3 gate)
      res2 BasicBlock(32) -> d2 1x1 32->16 -> gate2 GCL(c4 gate)
      res3 BasicBlock(16) -> d3 1x1 16->8  -> gate3 GCL(c5 gate)
      edge_logit 1x1 8->1 (no bias) -> sigmoid = edge (supervised by the boundary loss)
    concat(edge, canny) -> canny_fuse 1x1 2->1 (no bias) -> sigmoid = shape map (to the fusion)

Gate signals: gate_proj{1,2,3} 1x1 (C -> 1, bias) on c3, c4, c5, each upsampled to H, W.

Stem width: ResNet's stem has 64 channels; MobileNetV2's has 32*alpha. A 1x1 projection
(``stem_proj``) brings other widths to 64, so the shape stream is the paper's for every
backbone. It runs before the upsampling (a 1x1 conv and bilinear resizing commute, and the
stride-2 grid is 4x cheaper).

Official-checkpoint compatibility (``model.official_compat``): ``align_corners=True`` makes
every resize in the stream (stem and gate signals to full resolution) use aligned corners, as
the official code does.

Ablations: ``gated=False`` replaces each GCL by a plain 1x1 conv (``plain{1,2,3}``, no bias)
and drops the gate projections (c3..c5 are then ignored); ``use_canny=False`` feeds the edge
map itself to the fusion (no ``canny_fuse``).
"""
from __future__ import annotations

import keras
from keras import ops

from gscnn_tf.layers.gated_conv import GatedConv2D
from gscnn_tf.layers.residual_block import BasicBlock
from gscnn_tf.layers.resize import resize_like

SHAPE_STREAM_WIDTHS = (64, 32, 16, 8)


@keras.saving.register_keras_serializable(package="gscnn_tf")
class ShapeStream(keras.layers.Layer):
    """Gated shape stream.

    Call: ``layer([stem, c3, c4, c5, reference])``
        stem: (B, H/2, W/2, Cs) first backbone block; c3, c4, c5: (B, h_i, w_i, C_i) gate
        features (any grid); reference: (B, H, W, 1) Canny edge map when ``use_canny``,
        otherwise any full-resolution tensor (e.g. the image; only its H, W are used).
    Returns: ``[edge, shape_map, edge_logits]``, each (B, H, W, 1): the edge probability and
    the shape map in [0, 1], and the edge's pre-sigmoid logits (for a stable BCE).
    """

    def __init__(self, gated=True, use_canny=True, sync_batchnorm="auto", align_corners=False, **kwargs):
        super().__init__(**kwargs)
        self.align_corners = bool(align_corners)
        self.gated = bool(gated)
        self.use_canny = bool(use_canny)
        self.sync_batchnorm = sync_batchnorm

    def build(self, input_shape):
        stem_shape, *gate_shapes, reference_shape = input_shape
        if len(gate_shapes) != 3:
            raise ValueError(f"{self.name}: expected [stem, c3, c4, c5, reference], got {len(input_shape)} inputs")
        if self.use_canny and reference_shape[-1] != 1:
            raise ValueError(f"{self.name}: with use_canny the reference must be the (B,H,W,1) Canny map, got {reference_shape}")
        policy = self.dtype_policy
        w0, w1, w2, w3 = SHAPE_STREAM_WIDTHS

        def full_res(channels):
            return (None, None, None, channels)

        self.stem_proj = None
        if stem_shape[-1] != w0:
            self.stem_proj = keras.layers.Conv2D(w0, 1, name="stem_proj", dtype=policy)
            self.stem_proj.build(stem_shape)

        self.res_blocks, self.reducers, self.gates, self.gate_projections = [], [], [], []
        for i, (c_in, c_out) in enumerate([(w0, w1), (w1, w2), (w2, w3)], start=1):
            block = BasicBlock(sync_batchnorm=self.sync_batchnorm, name=f"res{i}", dtype=policy)
            block.build(full_res(c_in))
            reducer = keras.layers.Conv2D(c_out, 1, name=f"d{i}", dtype=policy)
            reducer.build(full_res(c_in))
            if self.gated:
                gate = GatedConv2D(sync_batchnorm=self.sync_batchnorm, name=f"gate{i}", dtype=policy)
                gate.build([full_res(c_out), full_res(1)])
                projection = keras.layers.Conv2D(1, 1, name=f"gate_proj{i}", dtype=policy)
                projection.build(gate_shapes[i - 1])
                self.gate_projections.append(projection)
            else:
                gate = keras.layers.Conv2D(c_out, 1, use_bias=False, name=f"plain{i}", dtype=policy)
                gate.build(full_res(c_out))
            self.res_blocks.append(block)
            self.reducers.append(reducer)
            self.gates.append(gate)

        self.edge_logit = keras.layers.Conv2D(1, 1, use_bias=False, name="edge_logit", dtype=policy)
        self.edge_logit.build(full_res(w3))
        self.canny_fuse = None
        if self.use_canny:
            self.canny_fuse = keras.layers.Conv2D(1, 1, use_bias=False, name="canny_fuse", dtype=policy)
            self.canny_fuse.build(full_res(2))

    def call(self, inputs, training=None):
        stem, c3, c4, c5, reference = inputs
        dtype = self.compute_dtype
        x = stem if self.stem_proj is None else self.stem_proj(stem)
        x = resize_like(x, reference, dtype=dtype, align_corners=self.align_corners)
        for i, regular_features in enumerate((c3, c4, c5)):
            x = self.res_blocks[i](x, training=training)
            x = self.reducers[i](x)
            if self.gated:
                gate_signal = resize_like(
                    self.gate_projections[i](regular_features), reference, dtype=dtype, align_corners=self.align_corners
                )
                x = self.gates[i]([x, gate_signal], training=training)
            else:
                x = self.gates[i](x)
        edge_logits = self.edge_logit(x)
        edge = ops.sigmoid(edge_logits)
        if not self.use_canny:
            return [edge, edge, edge_logits]
        canny = ops.cast(reference, edge.dtype)
        shape_map = ops.sigmoid(self.canny_fuse(ops.concatenate([edge, canny], axis=-1)))
        return [edge, shape_map, edge_logits]

    def compute_output_shape(self, input_shape):
        reference_shape = input_shape[-1]
        out = (reference_shape[0], reference_shape[1], reference_shape[2], 1)
        return [out, out, out]

    def get_config(self):
        config = super().get_config()
        config.update(
            gated=self.gated, use_canny=self.use_canny, sync_batchnorm=self.sync_batchnorm,
            align_corners=self.align_corners,
        )
        return config


@keras.saving.register_keras_serializable(package="gscnn_tf")
class ZeroEdgeMap(keras.layers.Layer):
    """Stand-in for the edge output when the shape stream is off (DeepLabV3+ baseline).

    Input: (B, H, W, C). Returns: (B, H, W, 1) zeros, so the model's output dict keeps its
    ``edge`` key and consumers need no special case.
    """

    def call(self, x):
        return ops.zeros_like(x[..., :1])

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (1,)
