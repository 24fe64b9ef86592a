"""evaluate(), reports, official Cityscapes cross-check and the evaluate.py CLI, with stand-in models."""
import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from gscnn_tf.config import EvalConfig
from gscnn_tf.evaluation import evaluate as evaluate_module
from gscnn_tf.evaluation import inference
from gscnn_tf.evaluation import report as report_module
from gscnn_tf.metrics import distance

K = 5


def _label_maps(n=3, h=32, w=48, seed=0, ignore=True):
    """Piecewise-constant label maps (8 x 8 blocks), some ignore pixels."""
    rng = np.random.default_rng(seed)
    maps = rng.integers(0, K - 1, (n, h // 8, w // 8)).repeat(8, 1).repeat(8, 2)  # class K-1 never used
    if ignore:
        maps[:, :3, :5] = 255
    return maps.astype(np.int32)


def _dataset(labels, with_filenames=False, images=None):
    """Images whose channel 0 is the train id (the echo model reads it), batch 1 per element."""
    if images is None:
        images = np.repeat(labels[..., None].astype(np.float32), 3, axis=-1)
    images = images[:, None]
    targets = {"label": labels[:, None], "boundary": np.zeros(labels[:, None].shape, np.float32)}
    if with_filenames:
        names = np.array([[f"city_{i:06d}_000019_leftImg8bit.png"] for i in range(len(labels))])
        return tf.data.Dataset.from_tensor_slices((images, targets, names))
    return tf.data.Dataset.from_tensor_slices((images, targets))


def _dict_model(fn):
    inp = keras.Input((None, None, 3))
    seg = keras.layers.Lambda(fn)(inp)
    edge = keras.layers.Lambda(lambda x: tf.zeros_like(x[..., :1]))(inp)
    return keras.Model(inp, {"seg_logits": seg, "edge": edge})


def _echo_model():
    """Returns the ground truth (encoded in the image) as one-hot logits."""
    return _dict_model(lambda x: 10.0 * tf.one_hot(tf.cast(tf.round(x[..., 0]), tf.int32), K))


def _constant_model(cls=0):
    return _dict_model(lambda x: 10.0 * tf.one_hot(tf.fill(tf.shape(x)[:3], cls), K))


def _cfg(**kw):
    base = dict(boundary_tolerances_px=[1, 2], boundary_reference_size=[32, 48], distance_crop_fractions=[1.0, 0.5])
    base.update(kw)
    return EvalConfig(**base)


def test_ground_truth_model_scores_perfectly():
    labels = _label_maps()
    report = evaluate_module.evaluate(_echo_model(), _dataset(labels), _cfg(), num_classes=K, distance_mode="crop")
    assert report["num_images"] == 3
    assert report["miou"] == pytest.approx(1.0)
    assert report["pixel_accuracy"] == pytest.approx(1.0)
    assert report["iou_per_class"]["class_4"] is None  # absent from GT and prediction
    for entry in report["boundary_f"].values():
        assert entry["f"] == pytest.approx(1.0) and entry["f_present"] == pytest.approx(1.0)
        assert entry["tolerance_px_used"] in ([1], [2])
    for entry in report["distance"]["fractions"].values():
        assert entry["miou"] == pytest.approx(1.0)
    json.dumps(report, allow_nan=False)  # JSON-serialisable, no NaN


def test_constant_model_scores_match_hand_computation():
    labels = _label_maps(ignore=False, seed=1)
    report = evaluate_module.evaluate(_constant_model(0), _dataset(labels), _cfg(), num_classes=K, distance_mode="resize")
    present = sorted(set(np.unique(labels)) | {0})
    iou0 = np.sum(labels == 0) / labels.size
    assert report["miou"] == pytest.approx(iou0 / len(present))
    assert report["pixel_accuracy"] == pytest.approx(iou0)
    # Boundary F (official): a class scores 1 on an image iff it is absent there from the GT
    # (the prediction, all class 0, has no boundary at all), else 0.
    expected = np.mean([[float(c not in np.unique(l)) for l in labels] for c in range(K)], axis=1).mean()
    for entry in report["boundary_f"].values():
        assert entry["f"] == pytest.approx(expected)
        assert entry["f_present"] == pytest.approx(0.0)
    # Distance: every crop is predicted as class 0 (whatever the resize does to constant logits).
    for key, entry in report["distance"]["fractions"].items():
        box = distance.crop_box(labels.shape[1:], float(key))
        crops = np.stack([distance.crop(l, box) for l in labels])
        classes = sorted(set(np.unique(crops)) | {0})
        assert entry["miou"] == pytest.approx(np.sum(crops == 0) / crops.size / len(classes))


def _conv_model(kernel_size, seed):
    keras.utils.set_random_seed(seed)
    inp = keras.Input((None, None, 3))
    seg = keras.layers.Conv2D(K, kernel_size, padding="same")(inp)
    return keras.Model(inp, {"seg_logits": seg, "edge": seg[..., :1]})


def test_flip_and_equal_size_scales_on_flip_equivariant_model_equal_single_scale():
    model = _conv_model(1, seed=2)  # per-pixel: flip-equivariant
    image = tf.random.normal((1, 32, 48, 3), seed=3)
    single = inference.MultiScalePredictor(model, [1.0], flip=False).probabilities(image).numpy()
    # 32 * 1.03 and 48 * 1.03 round to the same multiples of 8, so every variant is the same input
    multi = inference.MultiScalePredictor(model, [1.0, 1.03], flip=True).probabilities(image).numpy()
    np.testing.assert_allclose(multi, single, atol=1e-6)
    labels = np.asarray(tf.argmax(single[0], -1))
    np.testing.assert_array_equal(inference.MultiScalePredictor(model, [1.0, 1.03], True).labels(image), labels)


def test_multiscale_flip_averages_resized_softmax_and_flips_back():
    model = _conv_model(3, seed=4)  # 3x3 random kernel: not flip-equivariant
    seen = []
    original_call = model.call

    image = tf.random.normal((1, 40, 56, 3), seed=5)
    expected = np.zeros((1, 40, 56, K))
    for s, size in ((0.75, (32, 40)), (1.0, (40, 56)), (1.5, (64, 88))):  # 30->32, 42->40; 60->64, 84->88 (half up)
        assert inference.stride_aligned_size(40, 56, s) == size
        x = tf.image.resize(image, size)
        for flip in (False, True):
            xi = x[:, :, ::-1] if flip else x
            logits = model(xi)["seg_logits"].numpy()
            if flip:
                logits = logits[:, :, ::-1]
            logits = tf.image.resize(logits, (40, 56)).numpy()
            expected += tf.nn.softmax(logits).numpy()
    expected /= 6

    def spy(inputs, *a, **k):
        seen.append(tuple(inputs.shape[1:3]))
        return original_call(inputs, *a, **k)

    model.call = spy
    got = inference.MultiScalePredictor(model, [0.75, 1.0, 1.5], flip=True).probabilities(image).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert sorted(set(seen)) == [(32, 40), (40, 56), (64, 88)]
    assert inference.stride_aligned_size(10, 10, 0.1) == (8, 8)


def test_official_cityscapes_evaluation_agrees(tmp_path):
    num_classes = 19
    rng = np.random.default_rng(8)
    labels = rng.integers(0, 6, (2, 4, 6)).repeat(8, 1).repeat(8, 2).astype(np.int32)
    labels[:, :4, :4] = 255
    keras.utils.set_random_seed(9)
    inp = keras.Input((None, None, 3))
    seg = keras.layers.Conv2D(num_classes, 1)(inp)
    model = keras.Model(inp, {"seg_logits": seg, "edge": seg[..., :1]})
    images = rng.normal(size=labels.shape + (3,)).astype(np.float32)
    ds = _dataset(labels, with_filenames=True, images=images)
    cfg = EvalConfig(official_eval=True, boundary_tolerances_px=[3], distance_crop_fractions=[1.0])
    report = evaluate_module.evaluate(model, ds, cfg, num_classes=num_classes, output_dir=str(tmp_path), distance_mode=None)
    official = report["official"]
    assert "error" not in official, official
    assert official["miou"] == pytest.approx(report["miou"], abs=1e-9)
    assert official["category_miou"] == pytest.approx(report["category_miou"], abs=1e-9)
    assert sorted(os.listdir(tmp_path / "predictions")) == [
        "city_000000_000019_labelIds.png", "city_000001_000019_labelIds.png"]
    assert "distance" not in report


def test_official_evaluation_error_is_reported_not_exited(tmp_path):
    import cv2

    a = str(tmp_path / "a.png")
    b = str(tmp_path / "b.png")
    cv2.imwrite(a, np.zeros((4, 4), np.uint8))
    cv2.imwrite(b, np.zeros((4, 5), np.uint8))
    with pytest.raises(evaluate_module.OfficialEvalError, match="b.png"):
        evaluate_module.run_official_evaluation([a], [b])


def test_write_report_is_atomic(tmp_path):
    labels = _label_maps(n=1)
    report = evaluate_module.evaluate(_echo_model(), _dataset(labels), _cfg(), num_classes=K, distance_mode=None)
    json_path, md_path = report_module.write_report(report, str(tmp_path))
    assert json.load(open(json_path))["miou"] == pytest.approx(1.0)
    text = open(md_path).read()
    assert "| mIoU | 100.00 |" in text and "| class_0 |" in text
    before = open(json_path).read()
    broken = dict(report, miou=float("nan"))  # not valid JSON -> the write fails
    with pytest.raises(ValueError):
        report_module.write_report(broken, str(tmp_path))
    assert open(json_path).read() == before
    assert sorted(os.listdir(tmp_path)) == ["metrics.json", "metrics.md"]  # no temporary files left


def test_max_images_and_bad_datasets():
    labels = _label_maps(n=3)
    report = evaluate_module.evaluate(_echo_model(), _dataset(labels), _cfg(), num_classes=K, max_images=2, distance_mode=None)
    assert report["num_images"] == 2
    with pytest.raises(ValueError, match="empty"):
        evaluate_module.evaluate(_echo_model(), _dataset(labels).take(0), _cfg(), num_classes=K)
    with pytest.raises(ValueError, match="output_dir"):
        evaluate_module.evaluate(_echo_model(), _dataset(labels), _cfg(official_eval=True), num_classes=K)


def test_cli_missing_checkpoint_fails_with_path(tmp_path, capsys):
    from gscnn_tf.cli.evaluate import main

    missing = str(tmp_path / "no_such_run")
    assert main(["--checkpoint", missing, "--quiet"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and missing in err[0]


def test_cli_end_to_end_on_tfrecords(tmp_path, capsys):
    """A saved .keras stand-in model + config.yaml + 2 TFRecord images through evaluate.py."""
    import cv2

    from gscnn_tf.cli.evaluate import main
    from gscnn_tf.config import load_config, save_config
    from gscnn_tf.data.tfexample import make_example

    rng = np.random.default_rng(10)
    record = str(tmp_path / "val-00000-of-00001.tfrecord")
    with tf.io.TFRecordWriter(record) as writer:
        for i in range(2):
            image = rng.integers(0, 255, (32, 64, 3), dtype=np.uint8)
            label = rng.integers(0, 19, (4, 8)).repeat(8, 0).repeat(8, 1).astype(np.uint8)
            ok1, img_png = cv2.imencode(".png", image[..., ::-1])
            ok2, lab_png = cv2.imencode(".png", label)
            writer.write(make_example(img_png.tobytes(), lab_png.tobytes(), f"img{i}_leftImg8bit.png", 32, 64)
                         .SerializeToString())
    run = tmp_path / "run"
    run.mkdir()
    cfg = load_config(None, [f"data.val_pattern={record}", "model.backbone=mobilenetv2"])
    save_config(cfg, str(run / "config.yaml"))
    inp = keras.Input((None, None, 3), name="image")
    seg = keras.layers.Conv2D(19, 1, name="seg")(inp)
    edge = keras.layers.Conv2D(1, 1, activation="sigmoid", name="edge")(inp)
    keras.Model(inp, {"seg_logits": seg, "edge": edge}).save(str(run / "model.keras"))
    out = tmp_path / "out"
    rc = main(["--checkpoint", str(run), "--out", str(out), "--max-images", "2", "--flip", "--quiet",
               "--set", "eval.boundary_tolerances_px=[3]", "--distance-mode", "crop"])
    assert rc == 0
    report = json.load(open(out / "metrics.json"))
    assert report["num_images"] == 2 and report["flip"] is True
    assert "| mIoU |" in capsys.readouterr().out


def test_distance_resize_mode_reinfers_on_the_upsampled_crop():
    model = _conv_model(3, seed=12)
    rng = np.random.default_rng(13)
    labels = _label_maps(n=1, seed=13)
    images = rng.normal(size=labels.shape + (3,)).astype(np.float32)
    cfg = _cfg(distance_crop_fractions=[0.5])
    got = evaluate_module.evaluate(model, _dataset(labels, images=images), cfg, num_classes=K, distance_mode="resize",
                              vanishing_point=(0.25, 0.75))
    top, left, h, w = distance.crop_box((32, 48), 0.5, (0.25, 0.75))
    assert (top, left, h, w) == (16, 0, 16, 24)  # touches the bottom-left corner
    region = tf.image.resize(images[:, top:top + h, left:left + w], (32, 48))
    probs = tf.nn.softmax(model(region)["seg_logits"])
    pred = np.argmax(tf.image.resize(probs, (h, w)).numpy()[0], axis=-1)
    gt = labels[0, top:top + h, left:left + w]
    ious = []
    for c in range(K):
        union = np.sum(((gt == c) | (pred == c)) & (gt != 255))
        if union:
            ious.append(np.sum((gt == c) & (pred == c)) / union)
    assert got["distance"]["fractions"]["0.5"]["miou"] == pytest.approx(np.mean(ious))
    assert got["distance"]["vanishing_point"] == [0.25, 0.75] and got["distance"]["mode"] == "resize"
