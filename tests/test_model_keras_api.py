"""GatedSCNN as one Keras object: RGB 0..255 in, its own loss and metrics, fit/save/reload/predict.

The numbers are checked against independent computations: the in-graph normalisation
against NumPy's ``(rgb - mean) / std`` fed to the backbone, the logged loss terms against
``GSCNNLoss`` called directly, the reloaded model's classes against the in-memory model's.
"""
import dataclasses
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import TINY_MODEL

from gscnn_tf.backbones import normalization_for
from gscnn_tf.config import LossConfig, ModelConfig
from gscnn_tf.data.labels import label_ids_to_train_ids
from gscnn_tf.data.scene import render_scene
from gscnn_tf.layers.image_preprocessing import RANGE_ERROR
from gscnn_tf.losses import TERM_NAMES, GSCNNLoss, boundary_map
from gscnn_tf.model import GatedSCNN

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(TINY_MODEL, num_classes=19, sync_batchnorm=False)
H, W = 64, 96


def synthetic_batch(n=2, seed=0):
    """uint8 street scenes, their train ids and GT boundary maps."""
    rng = np.random.default_rng(seed)
    scenes = [render_scene(H, W, rng) for _ in range(n)]
    images = np.stack([s.image for s in scenes]).astype(np.uint8)
    labels = np.stack([label_ids_to_train_ids(s.label_ids) for s in scenes]).astype(np.int32)
    return images, {"label": labels, "boundary": np.asarray(boundary_map(labels), np.float32)}


@pytest.fixture(scope="module")
def model():
    keras.utils.set_random_seed(0)
    return GatedSCNN(TINY)


# ----------------------------------------------------------------------------- input contract


def test_input_contract_is_in_the_signature(model):
    assert model.input.name == "images" and tuple(model.input.shape) == (None, None, None, 3)
    assert model.get_layer("normalize").mean == normalization_for("mobilenetv2")[0]
    assert model.pixel_mean == (127.5, 127.5, 127.5)


def test_uint8_and_float_pixels_give_the_same_output_as_numpy_normalisation(model):
    images, _ = synthetic_batch()
    from_uint8 = model.predict(images, verbose=0)["seg_logits"]
    from_float = keras.ops.convert_to_numpy(model(images.astype(np.float32))["seg_logits"])
    np.testing.assert_allclose(from_uint8, from_float, rtol=0, atol=1e-5)
    # Independent: what the backbone sees is NumPy's (rgb - mean) / std.
    mean, std = normalization_for("mobilenetv2")
    want = (images.astype(np.float32) - np.float32(mean)) / np.float32(std)
    seen = keras.Model(model.input, model.get_layer("normalize").output)(images)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(seen), want, rtol=0, atol=1e-6)


@pytest.mark.parametrize("backbone", ["mobilenetv2", "resnet50", "wrn38"])
def test_normalised_input_is_refused_naming_the_contract(model, backbone):
    """An image normalised by the caller (for any backbone) fails loudly, never predicts."""
    images, _ = synthetic_batch(1)
    mean, std = normalization_for(backbone)
    normalised = (images.astype(np.float32) - np.float32(mean)) / np.float32(std)
    assert normalised.min() < 0  # what makes it detectable: pixels darker than the mean
    with pytest.raises(tf.errors.InvalidArgumentError, match="0..255"):
        model(normalised)
    with pytest.raises(tf.errors.InvalidArgumentError, match="Do not normalise"):
        model.predict(normalised, verbose=0)
    with pytest.raises(tf.errors.InvalidArgumentError, match="0..255"):
        tf.function(lambda x: model(x, training=False))(tf.constant(normalised))
    with pytest.raises(tf.errors.InvalidArgumentError):
        model(np.full((1, 16, 16, 3), 255.5, np.float32))  # above the range too
    assert "normalises them itself" in RANGE_ERROR


def test_range_check_can_be_switched_off_only_on_the_layer():
    from gscnn_tf.layers.image_preprocessing import RGBImageNormalization

    layer = RGBImageNormalization((127.5,) * 3, (127.5,) * 3, check_range=False)
    out = keras.ops.convert_to_numpy(layer(np.array([[[[-1.0, 0.0, 255.0]]]], np.float32)))
    np.testing.assert_allclose(out, [[[[-1.0 / 127.5 - 1.0, -1.0, 1.0]]]], rtol=1e-6)
    assert RGBImageNormalization.from_config(layer.get_config()).get_config() == layer.get_config()


# ----------------------------------------------------------------------------- loss and metrics


def test_compile_defaults_log_the_four_terms_and_miou(model):
    images, targets = synthetic_batch()
    model.compile(seed=0, jit_compile=False)
    logs = model.evaluate(images, targets, batch_size=2, verbose=0, return_dict=True)
    assert set(logs) == {"loss", "miou"} | {f"loss_{n}" for n in TERM_NAMES}
    # Independent: the loss object called directly on the model's outputs.
    outputs = model(images, training=False)
    direct = GSCNNLoss(LossConfig(gumbel_noise=False)).terms(targets, outputs)
    for name in ("seg", "edge_bce", "attention"):
        np.testing.assert_allclose(logs[f"loss_{name}"], float(direct[name]), rtol=1e-4)
    with pytest.raises(ValueError, match="metrics='auto'"):
        model.compile(metrics=["accuracy"])
    with pytest.raises(TypeError, match="GSCNNLoss"):
        model.compile(loss="mse")


def test_config_round_trip_and_from_yaml(tmp_path):
    model = GatedSCNN(ModelConfig(**TINY), LossConfig(edge_weight=5.0))
    clone = GatedSCNN.from_config(model.get_config())
    assert clone.model_config == model.model_config and clone.loss_config.edge_weight == 5.0
    assert [w.shape for w in clone.weights] == [w.shape for w in model.weights]
    yaml_model = GatedSCNN.from_yaml(os.path.join(ROOT, "configs", "cpu_demo.yaml"))
    assert yaml_model.model_config.backbone == "mobilenetv2"
    with pytest.raises(ValueError, match="model.num_classes"):
        GatedSCNN(dict(TINY, num_classes="19"))
    assert dataclasses.asdict(clone.model_config)["official_compat"] is False


def test_weights_file_holds_only_layers_until_compiled(tmp_path):
    import h5py

    model = GatedSCNN(TINY)
    path = str(tmp_path / "m.weights.h5")
    model.save_weights(path)
    with h5py.File(path) as f:
        assert set(f) <= {"layers", "vars"}  # the same layout as before GatedSCNN: old files load


# ----------------------------------------------------------------------------- one object end to end

_RELOAD_SCRIPT = r"""
import sys, numpy as np, keras
import gscnn_tf.model  # registers GatedSCNN
model = keras.saving.load_model(sys.argv[1])
assert type(model).__name__ == "GatedSCNN", type(model)
images = np.load(sys.argv[2])
np.save(sys.argv[3], model.predict(images, verbose=0)["seg_logits"].argmax(-1))
logs = model.evaluate(images, {"label": np.load(sys.argv[4]), "boundary": np.load(sys.argv[5])}, verbose=0,
                      return_dict=True)
assert "loss_dual_task" in logs and np.isfinite(logs["loss"]), logs
print("iterations", int(model.optimizer.iterations.numpy()))
"""


@pytest.mark.slow
def test_fit_two_steps_save_and_reload_in_a_fresh_process(tmp_path):
    images, targets = synthetic_batch(4, seed=1)
    ds = tf.data.Dataset.from_tensor_slices((images, targets)).batch(2)  # uint8 images, as decoded
    keras.utils.set_random_seed(0)
    model = GatedSCNN(TINY)
    model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9), seed=0)
    before = [w.copy() for w in model.get_weights()]
    history = model.fit(ds, epochs=1, verbose=0)
    assert int(model.optimizer.iterations.numpy()) == 2
    assert all(np.isfinite(history.history[k][0]) for k in ("loss", "loss_seg", "loss_edge_bce", "miou"))
    assert any(not np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
    want = model.predict(images, verbose=0)["seg_logits"].argmax(-1)

    path = str(tmp_path / "gscnn.keras")
    model.save(path)
    for name, value in (("images", images), ("label", targets["label"]), ("boundary", targets["boundary"])):
        np.save(tmp_path / f"{name}.npy", value)
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run(
        [sys.executable, "-c", _RELOAD_SCRIPT, path, str(tmp_path / "images.npy"), str(tmp_path / "classes.npy"),
         str(tmp_path / "label.npy"), str(tmp_path / "boundary.npy")],
        env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "iterations 2" in proc.stdout  # the optimizer state came back with the model
    np.testing.assert_array_equal(np.load(tmp_path / "classes.npy"), want)


def test_model_keras_from_before_gated_scnn_is_rebuilt_from_the_run_config(tmp_path):
    """An older run's model.keras is the bare network (input ``image``, normalised): loading it
    gives a GatedSCNN with its weights, which on RGB pixels predicts what it did on normalised ones."""
    from unittest import mock

    from gscnn_tf.config import ExperimentConfig, save_config
    from gscnn_tf.model import _network_outputs
    from gscnn_tf.training.checkpoints import CheckpointError, load_inference_model

    cfg = ExperimentConfig(model=ModelConfig(**dict(TINY, canny=False)))
    keras.utils.set_random_seed(4)
    with mock.patch("gscnn_tf.model.RGBImageNormalization", lambda *a, **k: keras.layers.Identity(name="identity")):
        image = keras.Input((None, None, 3), name="image")
        legacy = keras.Model(image, _network_outputs(image, cfg.model), name="gscnn")
    path = str(tmp_path / "model.keras")
    legacy.save(path)
    with pytest.raises(CheckpointError, match="pass --config"):
        load_inference_model(path)
    save_config(cfg, str(tmp_path / "config.yaml"))
    model, _ = load_inference_model(path)
    assert isinstance(model, GatedSCNN)
    images, _ = synthetic_batch(1)
    normalised = (images.astype(np.float32) - 127.5) / 127.5
    want = keras.ops.convert_to_numpy(legacy(normalised)["seg_logits"])
    np.testing.assert_allclose(keras.ops.convert_to_numpy(model(images)["seg_logits"]), want, atol=1e-5)
    # The older run's .weights.h5 files load into a GatedSCNN directly (same layout).
    weights = str(tmp_path / "best.weights.h5")
    legacy.save_weights(weights)
    keras.utils.set_random_seed(5)
    fresh = GatedSCNN(cfg.model)
    fresh.load_weights(weights)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(fresh(images)["seg_logits"]), want, atol=1e-5)


@pytest.mark.slow
def test_keras_export_of_the_same_object_serves_rgb_pixels(model, tmp_path):
    """``model.export`` (Keras' own SavedModel export) carries the normalisation and the range check."""
    path = str(tmp_path / "keras_export")
    model.export(path, format="tf_saved_model", verbose=False)
    loaded = tf.saved_model.load(path)  # keep it: its variables die with it
    serve = loaded.serve
    images, _ = synthetic_batch(1)
    got = serve(tf.constant(images, tf.float32))["seg_logits"].numpy()
    want = keras.ops.convert_to_numpy(model(images)["seg_logits"])
    np.testing.assert_allclose(got, want, atol=1e-5)
    with pytest.raises(tf.errors.InvalidArgumentError, match="0..255"):
        serve(tf.constant(images, tf.float32) / 127.5 - 1.0)


@pytest.mark.slow
def test_fit_under_a_two_replica_strategy_builds_without_pulling_a_batch():
    """Under a strategy Keras pulls a batch and MEAN-reduces it across replicas to build the
    compiled state (which fails under MultiWorkerMirroredStrategy); GatedSCNN builds its
    optimizer itself, so Keras' symbolic build never runs, and training starts with batch 0."""
    from unittest import mock

    from keras.src.backend.tensorflow.trainer import TensorFlowTrainer

    from gscnn_tf.training.distribute import cpu_mirrored_strategy

    strategy = cpu_mirrored_strategy(2)
    images, targets = synthetic_batch(1, seed=2)
    first = {"label": np.full_like(targets["label"], 1), "boundary": targets["boundary"]}
    rest = {"label": np.full_like(targets["label"], 2), "boundary": targets["boundary"]}

    # Global batch 0 is all class 1, every later one all class 2, distributed as train_keras.py
    # does: each element is one replica's batch of one image; one iterator for the whole run.
    def per_replica(context):
        return tf.data.Dataset.from_tensors((images, first)).repeat(2).concatenate(
            tf.data.Dataset.from_tensors((images, rest)).repeat())

    ds = strategy.distribute_datasets_from_function(per_replica)
    with strategy.scope():
        model = GatedSCNN(TINY)
        model.compile(seed=0)
    builds = []
    original = TensorFlowTrainer._symbolic_build

    def spy(self, *args, **kwargs):
        builds.append(1)
        return original(self, *args, **kwargs)

    with mock.patch.object(TensorFlowTrainer, "_symbolic_build", spy):
        model.fit(ds, epochs=1, steps_per_epoch=2, verbose=0, shuffle=False)
    assert not builds, "Keras' symbolic build ran: GatedSCNN._maybe_symbolic_build no longer takes over"
    assert model.optimizer.built and int(model.optimizer.iterations.numpy()) == 2
    seen = model.metrics[-1].confusion().sum(axis=1)  # ground-truth pixels per class over the 2 steps
    assert seen[1] == 2 * H * W and seen[2] == 2 * H * W, seen
