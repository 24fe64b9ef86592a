"""Shared pytest set-up: CPU only, quiet TensorFlow, a --runslow switch, small fixtures."""
import os

os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import pytest  # noqa: E402


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

    keras.backend.clear_session()


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


def tiny_experiment_config(synthetic, model_dir, **train_overrides):
    """The smallest real Gated-SCNN training config (MobileNetV2 x0.35, narrow heads, 64x64 crops)."""
    from gscnn_tf.config import load_config

    overrides = [
        "model.backbone=mobilenetv2", "model.mobilenet_alpha=0.35", "model.aspp_filters=16",
        "model.decoder_filters=16", "model.low_level_filters=8",
        f"data.train_pattern={synthetic['train_pattern']}", f"data.val_pattern={synthetic['val_pattern']}",
        "data.crop_size=[64, 64]", "data.shuffle_buffer=8", "data.min_scale=0.75", "data.max_scale=1.25",
        f"train.model_dir={model_dir}", "train.batch_size=2", "train.epochs=1", "train.steps_per_epoch=3",
        "train.image_summaries=1", "train.seed=0",
    ]
    overrides += [f"train.{k}={v}" for k, v in train_overrides.items()]
    return load_config(None, overrides)
