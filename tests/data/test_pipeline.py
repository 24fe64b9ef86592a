"""tf.data pipelines: shapes, dtypes, pixel round trips, targets, sharding, errors."""
import os

import cv2
import numpy as np
import pytest
import tensorflow as tf

from gscnn_tf.config import DataConfig
from gscnn_tf.data import pipeline, shard_checks, tfds_source
from gscnn_tf.data.labels import label_ids_to_train_ids
from gscnn_tf.data.tfexample import make_example
from gscnn_tf.losses.boundaries import boundary_map
from gscnn_tf.training.distribute import cpu_mirrored_strategy

H, W = 24, 40
LABEL_VALUES = (0, 1, 2, 5, 8, 13, 18, 255)


def _png(array):
    ok, buf = cv2.imencode(".png", array)
    assert ok
    return buf.tobytes()


def _make_sample(rng, h=H, w=W, values=LABEL_VALUES):
    image = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    blocks = rng.choice(np.array(values, np.uint8), size=((h + 5) // 6, (w + 5) // 6))
    label = np.kron(blocks, np.ones((6, 6), np.uint8))[:h, :w]
    return image, label


def write_shards(root, num_shards=2, per_shard=4, prefix="train", seed=0, sizes=None, values=LABEL_VALUES):
    """Writes tiny TFRecord shards; returns (pattern, {filename: (image, label)}, ordered names)."""
    rng = np.random.default_rng(seed)
    samples, names = {}, []
    for s in range(num_shards):
        path = os.path.join(root, f"{prefix}-{s:05d}-of-{num_shards:05d}.tfrecord")
        with tf.io.TFRecordWriter(path) as writer:
            for i in range(per_shard):
                h, w = sizes[(s * per_shard + i) % len(sizes)] if sizes else (H, W)
                image, label = _make_sample(rng, h, w, values)
                name = f"city_{s:02d}_{i:04d}"
                example = make_example(_png(image[..., ::-1]), _png(label), name, h, w)  # cv2 writes BGR
                writer.write(example.SerializeToString())
                samples[name] = (image, label)
                names.append(name)
    return os.path.join(root, f"{prefix}-*.tfrecord"), samples, names


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("records"))
    train = write_shards(root, prefix="train", seed=1)
    val = write_shards(root, prefix="val", seed=2, sizes=[(24, 40), (32, 48), (16, 24)])
    return train, val


def _config(shards, **kw):
    (train_pattern, _, _), (val_pattern, _, _) = shards
    cfg = DataConfig(train_pattern=train_pattern, val_pattern=val_pattern, crop_size=[16, 24], shuffle_buffer=8)
    for k, v in kw.items():
        setattr(cfg, k, v)
    return cfg


def test_eval_dataset_round_trips_pixels_labels_and_order(shards):
    _, (_, samples, names) = shards
    ds = pipeline.build_eval_dataset(_config(shards), with_filenames=True)
    seen = []
    for image, targets, filename in ds:
        name = filename.numpy()[0].decode()
        src_image, src_label = samples[name]
        assert image.dtype == tf.float32 and image.shape == (1,) + src_image.shape
        assert targets["label"].dtype == tf.int32 and targets["boundary"].dtype == tf.float32
        # RGB 0..255, not normalised: the model normalises for its backbone itself
        np.testing.assert_array_equal(image.numpy()[0], src_image.astype(np.float32))
        np.testing.assert_array_equal(targets["label"].numpy()[0], src_label)
        np.testing.assert_array_equal(targets["boundary"].numpy()[0], boundary_map(src_label, 2.0, 255).numpy())
        seen.append(name)
    assert seen == names  # ordered: shard after shard, record after record


def test_eval_dataset_on_the_train_split_is_ordered_and_unaugmented(shards):
    (_, samples, names), _ = shards
    ds = pipeline.build_eval_dataset(_config(shards), with_filenames=True, split="train")
    got = [(f.numpy()[0].decode(), t["label"].numpy()[0]) for _, t, f in ds]
    assert [n for n, _ in got] == names
    for name, label in got:
        np.testing.assert_array_equal(label, samples[name][1])


def test_eval_without_filenames_and_eval_scale(shards):
    _, (_, samples, names) = shards
    ds = pipeline.build_eval_dataset(_config(shards, eval_scale=0.5), boundary_radius=1.0)
    elements = list(ds)
    assert len(elements) == len(names)
    for (image, targets), name in zip(elements, names):
        src_image, src_label = samples[name]
        h, w = round(src_label.shape[0] / 2), round(src_label.shape[1] / 2)
        assert image.shape == (1, h, w, 3) and targets["label"].shape == (1, h, w)
        expected = cv2.resize(src_label, (w, h), interpolation=cv2.INTER_NEAREST_EXACT)
        np.testing.assert_array_equal(targets["label"].numpy()[0], expected)
        np.testing.assert_array_equal(targets["boundary"].numpy()[0], boundary_map(expected, 1.0, 255).numpy())


def _padding_of_a_training_run(tmp_path, pad_color, backbone="mobilenetv2"):
    """A training run's first batch (through training.run's dataset set-up, which resolves
    ``pad_color: mean``) and, per image, the padded area (outside the scaled image)."""
    from gscnn_tf.config import ExperimentConfig
    from gscnn_tf.training.run import _build_datasets

    pattern, _, _ = write_shards(str(tmp_path), num_shards=1, per_shard=2, values=(0, 3, 11))  # no ignore
    cfg = ExperimentConfig()
    cfg.model.backbone = backbone
    cfg.train.batch_size = 2
    cfg.data = DataConfig(train_pattern=pattern, deterministic=True, crop_size=[40, 64], min_scale=0.5,
                          max_scale=0.9, pad_color=pad_color, color_jitter=0.5, blur_prob=1.0)
    train_ds, _ = _build_datasets(cfg, tf.distribute.get_strategy(), seed=1)
    image, targets = next(iter(train_ds))
    label = targets["label"].numpy()
    outside = np.ones(label.shape, bool)
    for b in range(2):
        rows = np.nonzero((label[b] != 255).any(axis=1))[0]
        cols = np.nonzero((label[b] != 255).any(axis=0))[0]
        outside[b, rows.min() : rows.max() + 1, cols.min() : cols.max() + 1] = False
        assert outside[b].any()  # scale <= 0.9 of a 24x40 image never fills 40x64
    return image.numpy(), label, outside


@pytest.mark.parametrize("setting, backbone, rgb", [
    ("black", "mobilenetv2", (0, 0, 0)),
    ([10, 200, 30], "mobilenetv2", (10, 200, 30)),
    # Keras' MobileNetV2 scales to [-1, 1]: its mean is 127.5; Keras' ResNet weights are Caffe's
    # (ImageNet mean in RGB order 123.68, 116.779, 103.939).
    ("mean", "mobilenetv2", (127.5, 127.5, 127.5)),
    ("mean", "resnet50", (123.68, 116.779, 103.939)),
])
def test_train_padding_colour_follows_data_pad_color(tmp_path, setting, backbone, rgb):
    image, label, outside = _padding_of_a_training_run(tmp_path, setting, backbone)
    assert (label[outside] == 255).all()
    np.testing.assert_allclose(image[outside], np.broadcast_to(np.float32(rgb), (outside.sum(), 3)), atol=1e-4)
    assert not np.allclose(image[~outside], np.float32(rgb))  # the image itself is not the pad colour


def test_train_batches_targets_and_determinism(shards):
    (_, samples, _), _ = shards
    cfg = _config(shards, deterministic=True, color_jitter=0.25, blur_prob=0.5)

    def batches(seed):
        ds = pipeline.build_train_dataset(cfg, 3, seed=seed, boundary_radius=2.0)
        return [(i.numpy(), {k: v.numpy() for k, v in t.items()}, i.dtype, {k: v.dtype for k, v in t.items()}) for i, t in ds]

    a, b, c = batches(3), batches(3), batches(4)
    assert len(a) == 8 // 3  # drop_remainder
    source_values = set(np.unique(np.concatenate([l.ravel() for _, l in samples.values()])))
    for image, targets, image_dtype, dtypes in a:
        assert image.shape == (3, 16, 24, 3) and image_dtype == tf.float32
        assert targets["label"].shape == (3, 16, 24) and dtypes["label"] == tf.int32
        assert targets["boundary"].shape == (3, 16, 24) and dtypes["boundary"] == tf.float32
        label = targets["label"]
        assert set(np.unique(label)) <= source_values | {255}
        # Boundary targets are computed from the augmented labels.
        np.testing.assert_array_equal(targets["boundary"], boundary_map(label, 2.0, 255).numpy())
        assert targets["boundary"][label == 255].max(initial=0) == 0
        assert image.min() >= 0.0 and image.max() <= 255.0  # the model's input contract, exactly
    # Same seed: identical batches; another seed: different ones.
    for (ia, ta, _, _), (ib, tb, _, _) in zip(a, b):
        np.testing.assert_array_equal(ia, ib)
        np.testing.assert_array_equal(ta["label"], tb["label"])
        np.testing.assert_array_equal(ta["boundary"], tb["boundary"])
    assert any(not np.array_equal(ia, ic) for (ia, *_), (ic, *_) in zip(a, c))


def test_nondeterministic_mode_runs_and_repeat(shards):
    cfg = _config(shards, deterministic=False)
    ds = pipeline.build_train_dataset(cfg, 4, repeat=True)
    batches = list(ds.take(5))  # more than one pass over 8 images
    assert all(b[0].shape == (4, 16, 24, 3) for b in batches)


def test_distributed_dataset_splits_the_global_batch(shards):
    devices = tf.config.list_logical_devices("CPU")
    assert len(devices) >= 2, "tests/conftest.py should create 2 logical CPUs"
    strategy = cpu_mirrored_strategy(2)  # shared: see gscnn_tf/training/distribute.py
    cfg = _config(shards, deterministic=True)
    dist = pipeline.make_distributed_train_dataset(strategy, cfg, 4, seed=0)
    image, targets = next(iter(dist))
    images = strategy.experimental_local_results(image)
    labels = strategy.experimental_local_results(targets["label"])
    assert len(images) == 2
    for img, lab in zip(images, labels):
        assert img.shape == (2, 16, 24, 3) and lab.shape == (2, 16, 24)
    with pytest.raises(ValueError, match="divisible"):
        pipeline.make_distributed_train_dataset(strategy, cfg, 3)


def test_input_context_shards_files(shards):
    (_, _, names), _ = shards
    cfg = _config(shards, deterministic=True)
    seen = []
    for pid in range(2):
        ctx = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=pid, num_replicas_in_sync=2)
        records, _, decode_fn = pipeline.shuffled_train_records(cfg, seed=0, input_context=ctx)
        ds = records.map(decode_fn)
        files = sorted({f.numpy().decode() for _, _, f in ds})
        seen.append(files)
        assert len(files) == 4  # one of the two shards each
    assert sorted(seen[0] + seen[1]) == sorted(names) and not set(seen[0]) & set(seen[1])
    ctx = tf.distribute.InputContext(num_input_pipelines=3, input_pipeline_id=0, num_replicas_in_sync=3)
    with pytest.raises(ValueError, match="fewer than the 3 input pipelines"):
        pipeline.build_train_dataset(cfg, 3, input_context=ctx)


def test_missing_or_empty_pattern_errors(tmp_path):
    pattern = str(tmp_path / "nothing-*.tfrecord")
    with pytest.raises(FileNotFoundError, match="nothing-"):
        pipeline.build_train_dataset(DataConfig(train_pattern=pattern), 2)
    with pytest.raises(FileNotFoundError, match="data.val_pattern"):
        pipeline.build_eval_dataset(DataConfig(val_pattern=pattern))
    with pytest.raises(ValueError, match="train_pattern is empty"):
        pipeline.build_train_dataset(DataConfig(), 2)
    with pytest.raises(ValueError, match="unknown data.source"):
        pipeline.build_train_dataset(DataConfig(source="csv", train_pattern=pattern), 2)
    with pytest.raises(ValueError, match="split 'extra'"):
        pipeline.build_eval_dataset(DataConfig(val_pattern=pattern), split="extra")
    with pytest.raises(ValueError, match="data.test_pattern is empty"):
        pipeline.build_eval_dataset(DataConfig(val_pattern=pattern), split="test")


def test_corrupt_records_name_the_file(tmp_path):
    bad = str(tmp_path / "bad-00000-of-00001.tfrecord")
    with tf.io.TFRecordWriter(bad) as writer:
        writer.write(make_example(b"not an image at all", None, "broken_image", H, W).SerializeToString())
    with pytest.raises(tf.errors.InvalidArgumentError, match="bad-00000-of-00001.tfrecord") as info:
        list(pipeline.build_eval_dataset(DataConfig(val_pattern=bad)))
    assert "broken_image" in str(info.value)
    # A truncated shard: TF's DataLossError does not name it; find_corrupt_records does.
    good_pattern, _, _ = write_shards(str(tmp_path), num_shards=1, per_shard=2, prefix="cut")
    good = good_pattern.replace("*", "00000-of-00001")
    truncated = str(tmp_path / "cut-00001-of-00002.tfrecord")
    data = open(good, "rb").read()
    with open(truncated, "wb") as f:
        f.write(data[: len(data) - 50])
    found = shard_checks.find_corrupt_records(str(tmp_path / "cut-*.tfrecord"))
    assert [p for p, _ in found] == [truncated]


# ----------------------------------------------------------------------------- TFDS source


def test_tfds_label_mapping_matches_the_label_table():
    ids = np.arange(256, dtype=np.uint8).reshape(16, 16)
    mapped = tfds_source.label_ids_to_train_ids(tf.constant(ids)).numpy()
    assert mapped.dtype == np.uint8
    np.testing.assert_array_equal(mapped, label_ids_to_train_ids(ids))
    flat = mapped.ravel()
    assert flat[7] == 0 and flat[33] == 18 and flat[0] == 255 and flat[34] == 255  # road, bicycle, unlabeled


def test_tfds_record_decodes_to_the_shared_stream():
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (8, 12, 3), dtype=np.uint8)
    label_ids = rng.choice(np.array([0, 7, 8, 26, 33], np.uint8), size=(8, 12))
    record = {
        "image_left": tf.constant(_png(image[..., ::-1])),
        "segmentation_label": tf.constant(_png(label_ids)),
        "image_id": tf.constant("aachen_000000_000019"),
    }
    out_image, out_label, name = tfds_source.decode_tfds_record(record)
    np.testing.assert_array_equal(out_image.numpy(), image)
    np.testing.assert_array_equal(out_label.numpy(), label_ids_to_train_ids(label_ids))
    assert out_label.dtype == tf.uint8 and name.numpy() == b"aachen_000000_000019"


def test_tfds_source_without_zips_gives_a_clear_error(tmp_path):
    manual = tmp_path / "manual"
    manual.mkdir()
    (manual / "leftImg8bit_trainvaltest.zip").write_bytes(b"")
    cfg = DataConfig(source="tfds", tfds_data_dir=str(tmp_path / "tfds"), tfds_manual_dir=str(manual))
    with pytest.raises(tfds_source.TFDSSourceError, match="lacks gtFine_trainvaltest.zip") as info:
        pipeline.build_train_dataset(cfg, 2)
    assert str(manual) in str(info.value)
    cfg.tfds_manual_dir = None
    with pytest.raises(tfds_source.TFDSSourceError, match="tfds_manual_dir is not set"):
        pipeline.build_eval_dataset(cfg)
    with pytest.raises(tfds_source.TFDSSourceError, match="not a directory"):
        tfds_source.check_manual_dir(str(tmp_path / "missing"))


@pytest.mark.slow
def test_tfds_source_end_to_end_with_mocked_builder(tmp_path):
    """The TFDS path through both pipelines, on tfds.testing.mock_data's random
    1024x2048 examples (random label ids 0..255 -> train ids or 255)."""
    import tensorflow_datasets as tfds

    manual = tmp_path / "manual"
    manual.mkdir()
    for name in tfds_source.DEFAULT_REQUIRED_ZIPS:
        (manual / name).write_bytes(b"")
    cfg = DataConfig(source="tfds", tfds_data_dir=str(tmp_path / "tfds"), tfds_manual_dir=str(manual),
                     crop_size=[16, 24], shuffle_buffer=2, deterministic=True)
    valid = set(range(19)) | {255}
    with tfds.testing.mock_data(num_examples=3):
        batches = list(pipeline.build_train_dataset(cfg, 2, seed=0))
        assert len(batches) == 1
        image, targets = batches[0]
        assert image.shape == (2, 16, 24, 3) and targets["label"].dtype == tf.int32
        assert set(np.unique(targets["label"].numpy())) <= valid
        image, targets, filename = next(iter(pipeline.build_eval_dataset(cfg, with_filenames=True)))
        assert image.shape == (1, 1024, 2048, 3) and filename.dtype == tf.string
        assert set(np.unique(targets["label"].numpy())) <= valid
