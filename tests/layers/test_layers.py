"""Gated-SCNN layers against independent NumPy computations, configs and failure cases."""
import keras
import numpy as np
import pytest

from gscnn_tf.layers import (
    BasicBlock,
    DeepLabV3PlusDecoder,
    GatedConv2D,
    ResizeToReference,
    ShapeAwareASPP,
    ShapeStream,
    ZeroEdgeMap,
    atrous_rates_for,
)
from gscnn_tf.layers.normalization import BN_EPSILON

RNG = np.random.default_rng(0)


def randn(*shape):
    return RNG.standard_normal(shape).astype("float32")


# ----------------------------------------------------------------------------- NumPy references


def np_sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def np_conv1x1(x, kernel, bias=None):
    y = np.einsum("bhwc,cd->bhwd", x, kernel[0, 0])
    return y if bias is None else y + bias


def np_conv3x3_same(x, kernel):
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    h, w = x.shape[1:3]
    out = 0.0
    for dy in range(3):
        for dx in range(3):
            out = out + np.einsum("bhwc,cd->bhwd", padded[:, dy : dy + h, dx : dx + w], kernel[dy, dx])
    return out


def np_batch_norm(x, bn, training):
    gamma, beta, moving_mean, moving_var = (np.asarray(w) for w in bn.get_weights())
    if training:
        mean, var = x.mean(axis=(0, 1, 2)), x.var(axis=(0, 1, 2))
    else:
        mean, var = moving_mean, moving_var
    return gamma * (x - mean) / np.sqrt(var + BN_EPSILON) + beta


def np_resize_bilinear(x, out_h, out_w):
    """Half-pixel-centre bilinear resize (tf.image.resize / PyTorch align_corners=False)."""

    def axis_weights(n_in, n_out):
        src = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
        lo = np.floor(src).astype(int)
        hi = np.minimum(lo + 1, n_in - 1)
        return lo, hi, src - lo

    y0, y1, wy = axis_weights(x.shape[1], out_h)
    x0, x1, wx = axis_weights(x.shape[2], out_w)
    wy, wx = wy[None, :, None, None], wx[None, None, :, None]
    top = x[:, y0][:, :, x0] * (1 - wx) + x[:, y0][:, :, x1] * wx
    bottom = x[:, y1][:, :, x0] * (1 - wx) + x[:, y1][:, :, x1] * wx
    return top * (1 - wy) + bottom * wy


def randomize_batch_norms(layer):
    """Non-trivial gamma, beta and moving statistics, so inference BN is not the identity."""
    for sub in layer._flatten_layers(include_self=True, recursive=True):
        if isinstance(sub, keras.layers.BatchNormalization):
            c = sub.gamma.shape[0]
            sub.set_weights(
                [
                    RNG.uniform(0.5, 1.5, c).astype("float32"),
                    RNG.normal(0, 0.3, c).astype("float32"),
                    RNG.normal(0, 0.5, c).astype("float32"),
                    RNG.uniform(0.5, 2.0, c).astype("float32"),
                ]
            )


# ----------------------------------------------------------------------------- resize


def test_resize_to_reference_matches_numpy_bilinear_and_dynamic_shapes():
    x_in = keras.Input((None, None, 3))
    ref_in = keras.Input((None, None, 1))
    model = keras.Model([x_in, ref_in], ResizeToReference(name="up")([x_in, ref_in]))
    x = randn(2, 3, 5, 3)
    for out_h, out_w in [(6, 10), (7, 4), (3, 5)]:
        y = np.asarray(model([x, np.zeros((2, out_h, out_w, 1), "float32")]))
        np.testing.assert_allclose(y, np_resize_bilinear(x, out_h, out_w), rtol=1e-5, atol=1e-5)
    # Same size is the identity (the shape stream resizes already full-size maps).
    np.testing.assert_allclose(np.asarray(model([x, np.zeros((2, 3, 5, 1), "float32")])), x, atol=1e-6)


def test_resize_keeps_the_mixed_precision_compute_dtype():
    layer = ResizeToReference(dtype="mixed_float16")
    y = layer([np.ones((1, 2, 2, 4), "float16"), np.ones((1, 4, 4, 1), "float32")])
    assert y.dtype == "float16" and tuple(y.shape) == (1, 4, 4, 4)


# ----------------------------------------------------------------------------- BasicBlock


@pytest.mark.parametrize("training", [False, True])
def test_basic_block_matches_numpy(training):
    block = BasicBlock(name="res")
    x = randn(2, 6, 7, 4)
    block(x)
    randomize_batch_norms(block)
    y = np.asarray(block(x, training=training))
    k1, k2 = block.conv1.get_weights()[0], block.conv2.get_weights()[0]
    h = np.maximum(np_batch_norm(np_conv3x3_same(x, k1), block.bn1, training), 0)
    expected = np.maximum(x + np_batch_norm(np_conv3x3_same(h, k2), block.bn2, training), 0)
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-4)


def test_basic_block_needs_known_channels():
    with pytest.raises(ValueError, match="channel"):
        BasicBlock().build((None, None, None, None))


# ----------------------------------------------------------------------------- GCL


def np_gcl(gcl, s, r, training):
    joint = np.concatenate([s, r], axis=-1)
    hidden = np.maximum(np_conv1x1(np_batch_norm(joint, gcl.input_bn, training), *gcl.attention_hidden.get_weights()), 0)
    logit = np_conv1x1(hidden, *gcl.attention_out.get_weights())
    alpha = np_sigmoid(np_batch_norm(logit, gcl.attention_bn, training))
    return np_conv1x1(s * (alpha + 1.0), gcl.output_conv.get_weights()[0]), alpha


@pytest.mark.parametrize("training", [False, True])
def test_gated_conv_matches_numpy_formula(training):
    gcl = GatedConv2D(name="gate")
    s, r = randn(2, 5, 6, 8), randn(2, 5, 6, 1)
    gcl([s, r])
    randomize_batch_norms(gcl)
    # Weight shapes are the paper's: hidden width C+1, one attention channel, C outputs, no bias.
    assert gcl.attention_hidden.kernel.shape == (1, 1, 9, 9)
    assert gcl.attention_out.kernel.shape == (1, 1, 9, 1)
    assert gcl.output_conv.kernel.shape == (1, 1, 8, 8) and not gcl.output_conv.use_bias
    y = np.asarray(gcl([s, r], training=training))
    expected, alpha = np_gcl(gcl, s, r, training)
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.asarray(gcl.gate(s, r, training=training)), alpha, rtol=1e-4, atol=1e-5)
    # The gate depends on r: a different gate signal changes the output.
    assert not np.allclose(np.asarray(gcl([s, r + 3.0], training=False)), np.asarray(gcl([s, r], training=False)))


def test_gated_conv_filters_and_bad_gate():
    gcl = GatedConv2D(filters=3)
    assert tuple(gcl([randn(1, 4, 4, 8), randn(1, 4, 4, 1)]).shape) == (1, 4, 4, 3)
    with pytest.raises(ValueError, match="gate"):
        GatedConv2D()([randn(1, 4, 4, 8), randn(1, 4, 4, 2)])


# ----------------------------------------------------------------------------- shape stream


def shape_stream_inputs(stem_channels=16, size=(16, 24), canny=True):
    h, w = size
    return [
        randn(2, h // 2, w // 2, stem_channels),
        randn(2, h // 8, w // 8, 6),
        randn(2, h // 8, w // 8, 7),
        randn(2, h // 8, w // 8, 9),
        (RNG.random((2, h, w, 1)) > 0.8).astype("float32") if canny else randn(2, h, w, 3),
    ]


def test_shape_stream_outputs_full_resolution_probabilities():
    stream = ShapeStream(name="shape_stream")
    inputs = shape_stream_inputs()
    edge, shape_map, edge_logits = (np.asarray(t) for t in stream(inputs))
    assert edge.shape == shape_map.shape == edge_logits.shape == (2, 16, 24, 1)
    assert edge.min() >= 0 and edge.max() <= 1
    np.testing.assert_allclose(edge, np_sigmoid(edge_logits), rtol=1e-5, atol=1e-6)
    # Paper widths: res blocks 64/32/16, GCLs 32/16/8, a stem projection 16 -> 64.
    assert [g.output_conv.kernel.shape[-1] for g in stream.gates] == [32, 16, 8]
    assert [b.conv1.kernel.shape[-1] for b in stream.res_blocks] == [64, 32, 16]
    assert stream.stem_proj.kernel.shape == (1, 1, 16, 64)
    # Fusion input = sigmoid(1x1 no-bias conv over concat(edge, canny)).
    w = stream.canny_fuse.get_weights()[0][0, 0, :, 0]
    np.testing.assert_allclose(shape_map, np_sigmoid(w[0] * edge + w[1] * inputs[4]), rtol=1e-4, atol=1e-5)


def test_shape_stream_64_channel_stem_needs_no_projection():
    stream = ShapeStream()
    stream(shape_stream_inputs(stem_channels=64))
    assert stream.stem_proj is None


def test_shape_stream_gates_use_the_regular_stream_only_when_gated():
    inputs = shape_stream_inputs()
    changed = list(inputs)
    changed[2] = changed[2] + 5.0  # c4 gate features
    for gated in (True, False):
        stream = ShapeStream(gated=gated)
        edge_a = np.asarray(stream(inputs)[0])
        edge_b = np.asarray(stream(changed)[0])
        assert np.allclose(edge_a, edge_b) != gated
    ungated = ShapeStream(gated=False)
    ungated(inputs)
    assert not ungated.gate_projections and all(isinstance(g, keras.layers.Conv2D) for g in ungated.gates)


def test_shape_stream_without_canny_feeds_the_edge_map():
    stream = ShapeStream(use_canny=False)
    edge, shape_map, _ = stream(shape_stream_inputs(canny=False))
    np.testing.assert_array_equal(np.asarray(edge), np.asarray(shape_map))
    assert stream.canny_fuse is None
    with pytest.raises(ValueError, match="Canny"):
        ShapeStream(use_canny=True)(shape_stream_inputs(canny=False))


def test_zero_edge_map():
    y = ZeroEdgeMap()(randn(2, 8, 12, 3))
    assert tuple(y.shape) == (2, 8, 12, 1) and not np.any(np.asarray(y))


# ----------------------------------------------------------------------------- ASPP and decoder


def test_atrous_rates():
    assert atrous_rates_for(8) == (12, 24, 36)
    assert atrous_rates_for(16) == (6, 12, 18)
    with pytest.raises(ValueError, match="output_stride"):
        atrous_rates_for(32)


def test_shape_aware_aspp_branches():
    features, shape_map = randn(2, 4, 6, 12), RNG.random((2, 32, 48, 1)).astype("float32")
    aspp = ShapeAwareASPP(filters=16, atrous_rates=(2, 4, 6), name="aspp")
    y = np.asarray(aspp([features, shape_map]))
    assert y.shape == (2, 4, 6, 16) and y.min() >= 0  # ends in ReLU
    assert [a.layers[0].dilation_rate for a in aspp.atrous_branches] == [(2, 2), (4, 4), (6, 6)]
    assert aspp.project.layers[0].kernel.shape == (1, 1, 6 * 16, 16)  # pool, shape, 1x1, 3 atrous
    assert not np.allclose(y, np.asarray(aspp([features, 1.0 - shape_map])))  # the shape branch matters
    plain = ShapeAwareASPP(filters=16, atrous_rates=(2, 4, 6), use_shape=False)
    assert tuple(plain(features).shape) == (2, 4, 6, 16)
    assert plain.count_params() < aspp.count_params()


def test_decoder_upsamples_to_the_reference():
    decoder = DeepLabV3PlusDecoder(num_classes=5, filters=8, low_level_filters=4)
    y = decoder([randn(2, 2, 3, 10), randn(2, 4, 6, 7), np.zeros((2, 16, 24, 3), "float32")])
    assert tuple(y.shape) == (2, 16, 24, 5)
    assert decoder.refine1.layers[0].kernel.shape == (3, 3, 4 + 10, 8)
    assert decoder.classifier.kernel.shape == (1, 1, 8, 5)


# ----------------------------------------------------------------------------- configs


@pytest.mark.parametrize(
    "layer",
    [
        ResizeToReference(interpolation="nearest"),
        BasicBlock(sync_batchnorm=True),
        GatedConv2D(filters=4, sync_batchnorm=False),
        ShapeStream(gated=False, use_canny=False, sync_batchnorm=True),
        ShapeAwareASPP(filters=32, atrous_rates=(6, 12, 18), use_shape=False),
        DeepLabV3PlusDecoder(num_classes=3, filters=16, low_level_filters=8),
        ZeroEdgeMap(),
    ],
    ids=lambda layer: type(layer).__name__,
)
def test_layer_config_round_trip(layer):
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert type(restored) is type(layer)
    assert restored.get_config() == layer.get_config()
