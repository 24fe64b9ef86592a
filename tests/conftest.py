"""The shared test kit: CPU only, quiet TensorFlow, a --runslow switch, and the tiny things tests share.

* ``TINY_MODEL`` / :func:`tiny_model_config`: the smallest real Gated-SCNN (MobileNetV2 x0.35,
  narrow heads), for tests of the architecture at test-suite cost;
* :func:`build_standin_model` / :func:`build_tiny_model` / :func:`standin_config`: plain Keras
  models with GatedSCNN's input/output contract, for tests of export, serving and prediction;
* ``synthetic_tfrecords`` (session fixture) and :func:`tiny_experiment_config`: a converted
  synthetic dataset and the smallest real training config over it.

Test modules import the helpers with ``from conftest import ...`` (pytest puts tests/ on
sys.path); no test module imports another.
"""
import os

os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from gscnn_tf.utils.quiet_tensorflow import import_tensorflow_quietly  # noqa: E402

# Quietly: pytest-xdist's workers import this file before output capture starts.
tf = import_tensorflow_quietly()
import keras  # noqa: E402
import pytest  # noqa: E402

from gscnn_tf.config import ModelConfig, load_config  # noqa: E402

NUM_CLASSES = 19
# The smallest real Gated-SCNN: MobileNetV2 x0.35 regular stream, narrow ASPP / decoder.
TINY_MODEL = dict(backbone="mobilenetv2", mobilenet_alpha=0.35, aspp_filters=16, decoder_filters=16,
                  low_level_filters=8)


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="also run tests marked slow")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: takes more than ~30 s on 2 CPU cores (run with --runslow)")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow; run with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _clear_keras_session():
    """Each test starts from a clean Keras name scope and global state."""
    yield
    import keras

    keras.backend.clear_session(free_memory=False)


def _split_cpu_into_two_logical_devices():
    """MirroredStrategy tests need 2 devices; this must happen before TF initialises them."""
    import tensorflow as tf

    cpus = tf.config.list_physical_devices("CPU")
    try:
        tf.config.set_logical_device_configuration(
            cpus[0], [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()]
        )
    except RuntimeError:  # devices already initialised (e.g. a plugin imported TF first)
        pass


_split_cpu_into_two_logical_devices()


@pytest.fixture(scope="session")
def synthetic_tfrecords(tmp_path_factory):
    """A tiny synthetic Cityscapes-layout dataset (8 train, 2 val, 64x128) converted to TFRecords.

    Returns a dict: ``root`` (Cityscapes layout), ``records`` (dir), ``train_pattern``, ``val_pattern``.
    """
    from gscnn_tf.data.convert import convert_cityscapes
    from gscnn_tf.data.synthetic import generate_synthetic_cityscapes

    base = tmp_path_factory.mktemp("synthetic")
    root, records = str(base / "cityscapes"), str(base / "tfrecords")
    generate_synthetic_cityscapes(root, num_train=8, num_val=2, num_test=0, height=64, width=128, seed=0)
    convert_cityscapes(root, records, splits=("train", "val"), num_shards=2, workers=1)
    return {
        "root": root,
        "records": records,
        "train_pattern": os.path.join(records, "train_fine-*.tfrecord"),
        "val_pattern": os.path.join(records, "val_fine-*.tfrecord"),
    }


def tiny_model_config(**overrides) -> ModelConfig:
    """``TINY_MODEL`` with 19 classes as a ModelConfig; keyword arguments override any field."""
    return ModelConfig(**{"num_classes": NUM_CLASSES, **TINY_MODEL, **overrides})


def tiny_experiment_config(synthetic, model_dir, **train_overrides):
    """The smallest real Gated-SCNN training config (``TINY_MODEL``, 64x64 crops, 3 steps) over
    ``synthetic`` (the ``synthetic_tfrecords`` fixture); keyword arguments override ``train.*``."""
    overrides = [f"model.{key}={value}" for key, value in TINY_MODEL.items()] + [
        f"data.train_pattern={synthetic['train_pattern']}", f"data.val_pattern={synthetic['val_pattern']}",
        "data.crop_size=[64, 64]", "data.shuffle_buffer=8", "data.min_scale=0.75", "data.max_scale=1.25",
        f"train.model_dir={model_dir}", "train.batch_size=2", "train.epochs=1", "train.steps_per_epoch=3",
        "train.image_summaries=1", "train.seed=0",
    ]
    overrides += [f"train.{k}={v}" for k, v in train_overrides.items()]
    return load_config(None, overrides)


def write_untrained_run(cfg, run) -> str:
    """A run directory at ``run`` (``config.yaml`` + ``checkpoints/best.weights.h5``) holding an untrained
    Gated-SCNN of ``cfg``: for tests of the tools that read runs (evaluate, export, predict)."""
    from gscnn_tf.config import save_config
    from gscnn_tf.model import GatedSCNN
    from gscnn_tf.training.checkpoints import BEST_WEIGHTS, CONFIG_NAME

    cfg.train.model_dir = str(run)
    model = GatedSCNN(cfg.model, cfg.loss, cfg.dataset)
    os.makedirs(os.path.join(run, os.path.dirname(BEST_WEIGHTS)))
    save_config(cfg, os.path.join(run, CONFIG_NAME))
    model.save_weights(os.path.join(run, BEST_WEIGHTS))
    keras.backend.clear_session(free_memory=False)
    return str(run)


# ----------------------------------------------------------------------------- stand-in models
# Plain Keras models with GatedSCNN's contract (RGB 0..255 (B,H,W,3) -> {seg_logits, edge}): export,
# serving and prediction tests need the contract, not the architecture, and these build in milliseconds.


def standin_config():
    """The experiment config exported with a stand-in model (its normalisation is MobileNetV2's)."""
    return load_config(None, ["model.backbone=mobilenetv2", "model.mobilenet_alpha=0.35"])


@keras.saving.register_keras_serializable(package="gscnn_tests")
class GradientMagnitude(keras.layers.Layer):
    """Test-only custom layer (|dx| + |dy| of the channel mean): must not be needed to load the export."""

    def call(self, x):
        g = keras.ops.mean(x, axis=-1, keepdims=True)
        dy = keras.ops.abs(g[:, 1:, :, :] - g[:, :-1, :, :])
        dx = keras.ops.abs(g[:, :, 1:, :] - g[:, :, :-1, :])
        dy = keras.ops.pad(dy, [[0, 0], [0, 1], [0, 0], [0, 0]])
        dx = keras.ops.pad(dx, [[0, 0], [0, 0], [0, 1], [0, 0]])
        return dx + dy


@keras.saving.register_keras_serializable(package="gscnn_tests")
class Upsample8(keras.layers.Layer):
    """Bilinear x8 (keras' UpSampling2D cannot trace with unknown H, W in graph mode)."""

    def call(self, x):
        return tf.image.resize(x, tf.shape(x)[1:3] * 8, method="bilinear")

    def compute_output_shape(self, shape):
        return (shape[0], None if shape[1] is None else shape[1] * 8, None if shape[2] is None else shape[2] * 8,
                shape[3])


def build_standin_model(num_classes=NUM_CLASSES, seed=0):
    """Same contract as GatedSCNN: RGB 0..255 (B,H,W,3), H,W multiples of 8 -> {seg_logits, edge}.

    Stride-8 features with global (image-pooling) context, upsampled x8 and concatenated
    with full-resolution features: sizes that are not multiples of 8 fail to concatenate.
    """
    keras.utils.set_random_seed(seed)
    init = keras.initializers.RandomNormal(stddev=0.5, seed=seed)
    conv = lambda f, k, s=1, **kw: keras.layers.Conv2D(  # noqa: E731
        f, k, strides=s, padding="same", kernel_initializer="he_normal", bias_initializer=init, **kw)
    image = keras.Input((None, None, 3), name="image")
    grad = GradientMagnitude()(image)
    x = conv(8, 3, activation="relu")(image)
    y = keras.layers.BatchNormalization()(conv(8, 3, 2)(x))
    y = conv(16, 3, 2, activation="relu")(y)
    y = conv(16, 3, 2, activation="relu")(y)
    context = conv(16, 1)(keras.layers.GlobalAveragePooling2D(keepdims=True)(y))
    y = keras.layers.Add()([y, context])
    up = Upsample8()(y)
    z = keras.layers.Concatenate()([up, x, grad])
    logits = conv(num_classes, 1, name="seg_logits")(z)
    edge = conv(1, 1, activation="sigmoid", name="edge")(keras.layers.Concatenate()([z, grad]))
    return keras.Model(image, {"seg_logits": logits, "edge": edge}, name="standin")


def build_tiny_model(num_classes=NUM_CLASSES):
    """Smallest model with the contract, for tests about files and flags rather than numbers."""
    image = keras.Input((None, None, 3), name="image")
    return keras.Model(image, {"seg_logits": keras.layers.Conv2D(num_classes, 1)(image),
                               "edge": keras.layers.Conv2D(1, 1, activation="sigmoid")(image)})


def build_local_model(num_classes=NUM_CLASSES, seed=0):
    """The contract with a small receptive field and no global context: three 3x3 convolutions (7x7
    pixels seen per output), so tiles overlapping by more than that see what the whole image shows,
    except near tile borders (for tests of tiled inference)."""
    keras.utils.set_random_seed(seed)
    conv = lambda f, **kw: keras.layers.Conv2D(f, 3, padding="same", kernel_initializer="he_normal",  # noqa: E731
                                               bias_initializer=keras.initializers.RandomNormal(0.0, 0.3, seed), **kw)
    image = keras.Input((None, None, 3), name="image")
    x = keras.layers.Rescaling(1 / 127.5, offset=-1.0)(image)
    x = conv(8, activation="relu")(conv(8, activation="relu")(x))
    return keras.Model(image, {"seg_logits": conv(num_classes, name="seg_logits")(x),
                               "edge": conv(1, activation="sigmoid", name="edge")(x)}, name="local")
