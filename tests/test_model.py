"""GatedSCNN: output contract, ablations, serialisation, gradients, mixed precision, SyncBN."""
import re

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import tiny_model_config

from gscnn_tf.model import GatedSCNN
from gscnn_tf.training.distribute import cpu_mirrored_strategy

NUM_CLASSES = 5


def tiny_config(**overrides):
    """The kit's tiny Gated-SCNN with NUM_CLASSES classes."""
    return tiny_model_config(**{"num_classes": NUM_CLASSES, **overrides})


def images(batch, height, width, seed=0):
    """RGB in 0..255, as the model takes them."""
    return np.random.default_rng(seed).uniform(0, 255, (batch, height, width, 3)).astype("float32")


@pytest.fixture(scope="module")
def tiny_model():
    keras.utils.set_random_seed(0)
    return GatedSCNN(tiny_config())


def all_layers(model):
    return list(model._flatten_layers(include_self=False, recursive=True))


def assert_output_contract(outputs, batch, height, width):
    assert set(outputs) <= {"seg_logits", "edge", "edge_logits"} and {"seg_logits", "edge"} <= set(outputs)
    assert tuple(outputs["seg_logits"].shape) == (batch, height, width, NUM_CLASSES)
    assert tuple(outputs["edge"].shape) == (batch, height, width, 1)
    assert outputs["seg_logits"].dtype == "float32" and outputs["edge"].dtype == "float32"
    assert np.all(np.isfinite(np.asarray(outputs["seg_logits"])))


# ----------------------------------------------------------------------------- shapes


def test_output_shapes_at_output_stride_8(tiny_model):
    assert tiny_model.input.name == "images" and tuple(tiny_model.input.shape) == (None, None, None, 3)
    for layer_name in ("canny", "shape_stream", "aspp", "decoder", "seg_logits", "edge"):
        tiny_model.get_layer(layer_name)
    for height, width in [(64, 64), (64, 96), (96, 64)]:
        outputs = tiny_model(images(2, height, width))
        assert_output_contract(outputs, 2, height, width)
        edge = np.asarray(outputs["edge"])
        assert edge.min() >= 0.0 and edge.max() <= 1.0  # a probability
    assert tiny_model.get_layer("aspp").atrous_rates == (12, 24, 36)


def test_output_shapes_at_output_stride_16():
    model = GatedSCNN(tiny_config(output_stride=16))
    assert model.get_layer("aspp").atrous_rates == (6, 12, 18)
    for height, width in [(64, 64), (64, 96), (96, 64)]:
        assert_output_contract(model(images(1, height, width)), 1, height, width)


def test_sizes_not_divisible_by_the_output_stride_still_give_input_sized_outputs(tiny_model):
    # Documented behaviour (gscnn_tf/model.py): every resolution change resizes to a reference
    # tensor, so outputs always match the input; alignment is only exact for multiples of 32.
    for height, width in [(60, 84), (66, 70)]:
        assert_output_contract(tiny_model(images(1, height, width)), 1, height, width)


def test_bad_output_stride_is_rejected():
    with pytest.raises(ValueError, match="output_stride"):
        GatedSCNN(tiny_config(output_stride=32))


# ----------------------------------------------------------------------------- ablations


def test_ablations_remove_parameters_and_the_baseline_edge_is_zero(tiny_model):
    full = tiny_model.count_params()
    no_gates = GatedSCNN(tiny_config(gated=False))
    no_canny = GatedSCNN(tiny_config(canny=False))
    baseline = GatedSCNN(tiny_config(shape_stream=False))
    assert baseline.count_params() < no_gates.count_params() < full
    assert no_canny.count_params() == full - 2  # only the 2->1 canny_fuse kernel goes
    layer_names = {layer.name for layer in all_layers(no_gates)}
    assert not any(name.startswith(("gate", "gate_proj")) for name in layer_names)
    assert "canny" not in {layer.name for layer in no_canny.layers}
    assert not any("shape_stream" == layer.name for layer in baseline.layers)
    outputs = baseline(images(2, 64, 64))
    assert_output_contract(outputs, 2, 64, 64)
    assert not np.any(np.asarray(outputs["edge"]))


# ----------------------------------------------------------------------------- serialisation


def test_keras_save_load_round_trip_gives_identical_outputs(tiny_model, tmp_path):
    for layer in all_layers(tiny_model):  # non-trivial inference statistics
        if isinstance(layer, keras.layers.BatchNormalization):
            c = layer.gamma.shape[0]
            rng = np.random.default_rng(len(layer.name))
            layer.moving_mean.assign(rng.normal(0, 0.1, c).astype("float32"))
            layer.moving_variance.assign(rng.uniform(0.5, 1.5, c).astype("float32"))
    x = images(2, 64, 96, seed=3)
    before = tiny_model(x, training=False)
    path = str(tmp_path / "gscnn.keras")
    tiny_model.save(path)
    restored = keras.saving.load_model(path, compile=False)
    after = restored(x, training=False)
    assert [w.path for w in restored.weights] == [w.path for w in tiny_model.weights]
    for key in ("seg_logits", "edge"):
        np.testing.assert_array_equal(np.asarray(after[key]), np.asarray(before[key]))


# ----------------------------------------------------------------------------- gradients

# Parameters whose effect is a per-channel constant that a following *training-mode* BatchNorm
# subtracts again, so their gradient is analytically zero (numerically ~1e-10): the biases of
# the gate projections and of the GCL attention logit (both feed BN directly), and MobileNetV2's
# linear-bottleneck "project_BN" betas (only reach the loss through conv -> BN).
ZERO_GRADIENT_BY_DESIGN = re.compile(r"(gate_proj\d/bias|attention_out/bias|_project_BN/beta)$")


def test_every_trainable_weight_gets_a_gradient_from_both_outputs(tiny_model):
    x = tf.constant(images(2, 64, 64, seed=1))
    rng = np.random.default_rng(2)
    seg_weight = tf.constant(rng.standard_normal((2, 64, 64, NUM_CLASSES)).astype("float32"))
    edge_weight = tf.constant(rng.standard_normal((2, 64, 64, 1)).astype("float32"))
    with tf.GradientTape() as tape:
        outputs = tiny_model(x, training=True)
        loss = tf.reduce_mean(outputs["seg_logits"] * seg_weight) + tf.reduce_mean(outputs["edge"] * edge_weight)
    weights = tiny_model.trainable_weights
    grads = tape.gradient(loss, weights)
    assert len(weights) > 100
    dead, unexpected_live = [], []
    for weight, grad in zip(weights, grads):
        assert grad is not None, weight.path
        grad = np.asarray(grad)
        assert np.all(np.isfinite(grad)), weight.path
        largest = np.abs(grad).max()
        if ZERO_GRADIENT_BY_DESIGN.search(weight.path):
            if largest > 1e-7 and not weight.path.startswith(("Conv", "block", "expanded")):
                unexpected_live.append(weight.path)
        elif largest <= 1e-7:
            dead.append(weight.path)
    assert not dead, f"no gradient reaches {dead}"
    assert not unexpected_live, f"expected analytic zeros, got gradients for {unexpected_live}"
    # The edge output alone drives the shape stream and the backbone, not the segmentation head.
    with tf.GradientTape() as tape:
        edge_loss = tf.reduce_mean(tiny_model(x, training=True)["edge"] * edge_weight)
    edge_grads = dict(zip([w.path for w in weights], tape.gradient(edge_loss, weights)))
    assert edge_grads["decoder/classifier/kernel"] is None
    assert np.abs(np.asarray(edge_grads["shape_stream/gate1/output_conv/kernel"])).max() > 0


# ----------------------------------------------------------------------------- mixed precision


def test_mixed_precision_keeps_outputs_float32():
    keras.config.set_dtype_policy("mixed_float16")
    try:
        model = GatedSCNN(tiny_config())
        assert model.get_layer("aspp").compute_dtype == "float16"
        assert model.get_layer("shape_stream").compute_dtype == "float16"
        outputs = model(images(1, 64, 64))
    finally:
        keras.config.set_dtype_policy("float32")
    assert_output_contract(outputs, 1, 64, 64)
    assert np.all(np.isfinite(np.asarray(outputs["edge"])))


# ----------------------------------------------------------------------------- SyncBN


def test_batch_norms_are_synchronized_under_mirrored_strategy(tiny_model):
    assert len(tf.config.list_logical_devices("CPU")) >= 2, "conftest should split the CPU"
    strategy = cpu_mirrored_strategy(2)  # shared: see gscnn_tf/training/distribute.py
    with strategy.scope():
        synced = GatedSCNN(tiny_config())
        unsynced = GatedSCNN(tiny_config(sync_batchnorm=False))
    plain = tiny_model  # "auto", built outside a strategy

    def sync_flags(model):
        return [layer.synchronized for layer in all_layers(model) if isinstance(layer, keras.layers.BatchNormalization)]

    flags = sync_flags(synced)
    assert len(flags) > 40 and all(flags)  # backbone, shape stream, ASPP and decoder alike
    assert not any(sync_flags(unsynced)) and not any(sync_flags(plain))
    # A training-mode step runs on both replicas (SyncBN all-reduces the moments).
    per_replica = strategy.experimental_distribute_values_from_function(
        lambda ctx: tf.constant(images(1, 64, 64, seed=ctx.replica_id_in_sync_group))
    )
    result = strategy.run(lambda x: synced(x, training=True)["seg_logits"], args=(per_replica,))
    assert [tuple(t.shape) for t in strategy.experimental_local_results(result)] == [(1, 64, 64, NUM_CLASSES)] * 2


def test_model_runs_in_a_graph_with_run_time_image_sizes(tiny_model):
    """model.fit and SavedModel signatures trace with (None, None, None, 3): every resize is dynamic."""

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)])
    def serve(x):
        return tiny_model(x, training=False)

    for height, width in ((64, 64), (48, 80)):
        x = images(1, height, width)
        graph_out = serve(tf.constant(x))
        eager_out = tiny_model(x, training=False)
        assert graph_out["seg_logits"].shape == (1, height, width, eager_out["seg_logits"].shape[-1])
        np.testing.assert_allclose(graph_out["seg_logits"].numpy(), eager_out["seg_logits"].numpy(), atol=1e-4)
