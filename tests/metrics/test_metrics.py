"""Metrics against independent NumPy/SciPy computations and hand-made cases."""
import math

import numpy as np
import pytest
import scipy.ndimage

from gscnn_tf.data import labels
from gscnn_tf.metrics import boundary_f, confusion, distance
from gscnn_tf.training.distribute import cpu_mirrored_strategy

# ----------------------------------------------------------------------------- confusion


def _loop_confusion(gt, pred, k, ignore=255):
    cm = np.zeros((k, k), np.int64)
    for g, p in zip(gt.ravel(), pred.ravel()):
        if g == ignore or not 0 <= g < k:
            continue
        cm[g, p] += 1
    return cm


def test_confusion_matrix_matches_pixel_loop():
    rng = np.random.default_rng(0)
    gt = rng.integers(0, 6, (3, 17, 23))
    gt[rng.random(gt.shape) < 0.2] = 255
    pred = rng.integers(0, 6, gt.shape)
    np.testing.assert_array_equal(confusion.confusion_matrix(gt, pred, 6), _loop_confusion(gt, pred, 6))


def test_confusion_rejects_out_of_range_prediction_and_shape_mismatch():
    with pytest.raises(ValueError, match="outside"):
        confusion.confusion_matrix(np.zeros((2, 2), int), np.full((2, 2), 7), 3)
    with pytest.raises(ValueError, match="shape"):
        confusion.confusion_matrix(np.zeros((2, 2), int), np.zeros((2, 3), int), 3)


def test_iou_hand_computed():
    # 4 classes; class 3 absent from GT and prediction -> NaN, excluded from the mean.
    gt = np.array([[0, 0, 1, 1], [0, 2, 2, 255]])
    pred = np.array([[0, 1, 1, 1], [0, 2, 0, 0]])
    cm = confusion.confusion_matrix(gt, pred, 4)
    # class 0: TP 2, FP 1 (gt 2 -> 0), FN 1 (gt 0 -> 1) -> 2/4
    # class 1: TP 2, FP 1, FN 0 -> 2/3 ; class 2: TP 1, FP 0, FN 1 -> 1/2
    iou = confusion.iou_per_class(cm)
    np.testing.assert_allclose(iou[:3], [0.5, 2 / 3, 0.5])
    assert math.isnan(iou[3])
    assert confusion.mean_iou(cm) == pytest.approx((0.5 + 2 / 3 + 0.5) / 3)
    assert confusion.pixel_accuracy(cm) == pytest.approx(5 / 7)
    np.testing.assert_allclose(confusion.class_accuracy(cm)[:3], [2 / 3, 1.0, 0.5])
    assert confusion.mean_class_accuracy(cm) == pytest.approx((2 / 3 + 1 + 0.5) / 3)


def test_predicted_but_absent_class_counts_as_zero():
    gt = np.zeros((2, 2), int)
    pred = np.array([[0, 0], [0, 1]])
    cm = confusion.confusion_matrix(gt, pred, 3)
    np.testing.assert_allclose(confusion.iou_per_class(cm)[:2], [0.75, 0.0])
    assert confusion.mean_iou(cm) == pytest.approx(0.375)


def test_category_iou_matches_cityscapes_formula():
    rng = np.random.default_rng(1)
    gt = rng.integers(0, 19, (40, 40))
    pred = np.where(rng.random(gt.shape) < 0.6, gt, rng.integers(0, 19, gt.shape))
    cm = confusion.confusion_matrix(gt, pred, 19)
    cat_gt = labels.CLASS_TO_CATEGORY[gt]
    cat_pred = labels.CLASS_TO_CATEGORY[pred]
    expected = []
    for c in range(7):
        tp = np.sum((cat_gt == c) & (cat_pred == c))
        fp = np.sum((cat_gt != c) & (cat_pred == c))
        fn = np.sum((cat_gt == c) & (cat_pred != c))
        expected.append(tp / (tp + fp + fn))
    np.testing.assert_allclose(confusion.category_iou(cm), expected)
    assert confusion.category_mean_iou(cm) == pytest.approx(np.mean(expected))
    s = confusion.summarize(cm)
    assert set(s["iou_per_category"]) == set(labels.CATEGORY_NAMES)
    assert s["miou"] == pytest.approx(confusion.mean_iou(cm))


def _numpy_miou(gt, pred, k):
    ious = []
    for c in range(k):
        valid = gt != 255
        tp = np.sum((gt == c) & (pred == c) & valid)
        union = np.sum(((gt == c) | (pred == c)) & valid)
        if union:
            ious.append(tp / union)
    return np.mean(ious)


def _batches(seed=2, n=3, k=5):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        gt = rng.integers(0, k - 1, (2, 6, 7)).astype(np.int32)  # class k-1 never in GT
        gt[rng.random(gt.shape) < 0.15] = 255
        logits = rng.normal(size=(2, 6, 7, k)).astype(np.float32)
        out.append((gt, logits))
    return out


def test_streaming_miou_equals_numpy_after_several_batches():
    batches = _batches()
    metric = confusion.StreamingMeanIoU(num_classes=5)
    assert float(metric.result()) == 0.0
    for i, (gt, logits) in enumerate(batches):
        if i % 2:  # accept the targets / outputs dicts too
            metric.update_state({"label": gt, "boundary": np.zeros(gt.shape, np.float32)},
                                {"seg_logits": logits, "edge": np.zeros(gt.shape + (1,), np.float32)})
        else:
            metric.update_state(gt, logits)
    gt = np.concatenate([b[0] for b in batches])
    pred = np.concatenate([b[1] for b in batches]).argmax(-1)
    assert float(metric.result()) == pytest.approx(_numpy_miou(gt, pred, 5), rel=1e-6)
    np.testing.assert_array_equal(metric.confusion(), _loop_confusion(gt, pred, 5))
    metric.reset_state()
    assert metric.confusion().sum() == 0


def test_streaming_miou_under_mirrored_strategy():
    import tensorflow as tf

    devices = tf.config.list_logical_devices("CPU")
    if len(devices) < 2:
        pytest.skip("needs 2 logical CPU devices (tests/conftest.py)")
    strategy = cpu_mirrored_strategy(2)  # shared: see gscnn_tf/training/distribute.py
    with strategy.scope():
        metric = confusion.StreamingMeanIoU(num_classes=5)
    batches = _batches(seed=3, n=2)
    gt = np.concatenate([b[0] for b in batches])
    logits = np.concatenate([b[1] for b in batches])
    ds = strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensor_slices((gt, logits)).batch(2))

    @tf.function
    def step(y, p):
        strategy.run(metric.update_state, args=(y, p))

    for y, p in ds:
        step(y, p)
    assert strategy.num_replicas_in_sync == 2
    np.testing.assert_array_equal(metric.confusion(), _loop_confusion(gt, logits.argmax(-1), 5))
    assert float(metric.result()) == pytest.approx(_numpy_miou(gt, logits.argmax(-1), 5), rel=1e-6)


def test_streaming_miou_serialisable():
    import keras

    metric = confusion.StreamingMeanIoU(num_classes=7, ignore_label=254, name="val_miou")
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(metric))
    assert isinstance(restored, confusion.StreamingMeanIoU)
    assert (restored.num_classes, restored.ignore_label, restored.name) == (7, 254, "val_miou")


# ----------------------------------------------------------------------------- boundary F


def _loop_seg2bmap(mask):
    h, w = mask.shape
    out = np.zeros_like(mask, dtype=bool)
    for y in range(h):
        for x in range(w):
            neighbours = [(y, x + 1), (y + 1, x), (y + 1, x + 1)]
            out[y, x] = any(yy < h and xx < w and mask[yy, xx] != mask[y, x] for yy, xx in neighbours)
    return out


def _reference_boundary_f(pred, gt, k, tolerance, ignore=255):
    """Independent: loop seg2bmap + scipy EDT + official degenerate cases; (k,) F of one image."""
    f = np.ones(k)
    valid = gt != ignore
    for c in range(k):
        bp = _loop_seg2bmap((pred == c) & valid)
        bg = _loop_seg2bmap((gt == c) & valid)
        n_p, n_g = bp.sum(), bg.sum()
        if n_p == 0 and n_g == 0:
            continue
        if n_p == 0 or n_g == 0:
            f[c] = 0.0
            continue
        dist_to_g = scipy.ndimage.distance_transform_edt(~bg)
        dist_to_p = scipy.ndimage.distance_transform_edt(~bp)
        precision = np.mean(dist_to_g[bp] ** 2 <= tolerance**2 + 1e-9)
        recall = np.mean(dist_to_p[bg] ** 2 <= tolerance**2 + 1e-9)
        f[c] = 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)
    return f


def test_seg2bmap_matches_loop_and_official_corner_rules():
    rng = np.random.default_rng(4)
    for _ in range(5):
        mask = rng.random((9, 11)) < 0.5
        np.testing.assert_array_equal(boundary_f.seg2bmap(mask), _loop_seg2bmap(mask))
    mask = np.zeros((5, 5), bool)
    mask[1:3, 1:3] = True
    expected = np.array([
        [1, 1, 1, 0, 0],
        [1, 0, 1, 0, 0],
        [1, 1, 1, 0, 0],
        [0, 0, 0, 0, 0],
        [0, 0, 0, 0, 0],
    ], bool)
    np.testing.assert_array_equal(boundary_f.seg2bmap(mask), expected)


def test_sparse_boundary_pixels_equal_dense_seg2bmap():
    rng = np.random.default_rng(5)
    lab = rng.integers(-1, 4, (12, 15))
    points = boundary_f.boundary_pixels(lab, 4)
    for c in range(4):
        np.testing.assert_array_equal(points.get(c, np.zeros((0, 2))), np.argwhere(_loop_seg2bmap(lab == c)))


@pytest.mark.parametrize("shift", [1, 2, 4])
def test_shifted_square_f_is_one_iff_tolerance_reaches_shift(shift):
    gt = np.zeros((40, 40), np.int64)
    gt[10:26, 10:26] = 1
    pred = np.roll(gt, shift, axis=1)
    for d in range(1, 7):
        p, r, f, empty = boundary_f.boundary_prf(pred == 1, gt == 1, [d])
        assert not empty
        assert (f[0] == pytest.approx(1.0)) == (d >= shift), (d, f)
        assert f[0] == pytest.approx(_reference_boundary_f(pred, gt, 2, d)[1])


def test_boundary_f_matches_reference_on_random_maps():
    rng = np.random.default_rng(6)
    for trial in range(3):
        gt = rng.integers(0, 4, (6, 8)).repeat(4, 0).repeat(4, 1)
        pred = np.where(rng.random(gt.shape) < 0.85, gt, rng.integers(0, 4, gt.shape))
        gt[rng.random(gt.shape) < 0.05] = 255
        tolerances = [1, 2, 3]
        f, empty = boundary_f.image_boundary_f(pred, gt, 5, tolerances)
        for j, d in enumerate(tolerances):
            np.testing.assert_allclose(f[:, j], _reference_boundary_f(pred, gt, 5, d), err_msg=f"trial {trial} d {d}")
        assert empty[4]  # class 4 never appears


def test_boundary_f_degenerate_cases_follow_official():
    gt = np.zeros((10, 10), int)
    gt[2:6, 2:6] = 1
    only_gt = boundary_f.boundary_prf(np.zeros_like(gt, bool), gt == 1, [2])
    assert (only_gt[0][0], only_gt[1][0], only_gt[2][0], only_gt[3]) == (1, 0, 0, False)
    only_pred = boundary_f.boundary_prf(gt == 1, np.zeros_like(gt, bool), [2])
    assert (only_pred[0][0], only_pred[1][0], only_pred[2][0]) == (0, 1, 0)
    neither = boundary_f.boundary_prf(np.zeros_like(gt, bool), np.zeros_like(gt, bool), [2])
    assert neither[2][0] == 1 and neither[3]
    # Ignore pixels remove a boundary that only the prediction has inside the ignored area.
    pred = gt.copy()
    pred[7:9, 7:9] = 1
    gt_ign = gt.copy()
    gt_ign[6:10, 6:10] = 255
    f, _ = boundary_f.image_boundary_f(pred, gt_ign, 2, [1])
    np.testing.assert_allclose(f[:, 0], [1.0, 1.0])
    f, _ = boundary_f.image_boundary_f(pred, gt, 2, [1])
    assert f[1, 0] < 1.0


def test_boundary_f_aggregation_official_and_present():
    acc = boundary_f.BoundaryFScore(num_classes=3, tolerances_px=[2], reference_size=(20, 20))
    gt = np.zeros((20, 20), int)
    gt[5:10, 5:10] = 1
    acc.update(gt.copy(), gt)  # perfect: class 0 and 1 F=1, class 2 absent (F=1)
    wrong = np.zeros_like(gt)
    acc.update(wrong, gt)  # class 1 missed: F=0; class 0 has no predicted boundary: F=0
    np.testing.assert_allclose(acc.per_class()[:, 0], [0.5, 0.5, 1.0])
    assert acc.result()[0] == pytest.approx(2 / 3)
    np.testing.assert_allclose(acc.per_class_present()[:2, 0], [0.5, 0.5])
    assert math.isnan(acc.per_class_present()[2, 0])
    assert acc.result_present()[0] == pytest.approx(0.5)


def test_tolerances_scale_with_the_diagonal():
    assert boundary_f.scaled_tolerances([3, 5, 9, 12], (1024, 2048)) == [3, 5, 9, 12]
    assert boundary_f.scaled_tolerances([3, 5, 9, 12], (512, 1024)) == [2, 3, 5, 6]
    # The official relative thresholds at 1024 x 2048: d = ceil(t * diagonal).
    diag = math.hypot(1024, 2048)
    assert [math.ceil(t * diag) for t in (0.00375, 0.005)] == [9, 12]
    assert boundary_f.scaled_tolerances([1], (8, 8), (1024, 2048)) == [1]  # never 0
    with pytest.raises(ValueError):
        boundary_f.scaled_tolerances([0], (10, 10))


# ----------------------------------------------------------------------------- distance


def test_crop_box_geometry():
    # default vanishing point (0.5, 0.45) of a 100 x 200 image
    assert distance.crop_box((100, 200), 1.0) == (0, 0, 100, 200)
    assert distance.crop_box((100, 200), 0.5) == (20, 50, 50, 100)  # top = 45 - 25
    assert distance.crop_box((100, 200), 0.25) == (33, 75, 25, 50)  # top = floor(45 - 12.5 + 0.5)
    # explicit point near a corner: the crop is clamped inside the image
    assert distance.crop_box((100, 200), 0.5, (0.0, 1.0)) == (50, 0, 50, 100)
    assert distance.crop_box((1024, 2048), 0.75) == (77, 256, 768, 1536)  # floor(460.8 - 384 + 0.5)
    with pytest.raises(ValueError):
        distance.crop_box((10, 10), 0.0)
    with pytest.raises(ValueError):
        distance.crop_box((10, 10), 0.5, (1.5, 0.5))


def test_crop_box_centre_and_size_properties():
    rng = np.random.default_rng(7)
    for _ in range(50):
        h, w = rng.integers(8, 300, 2)
        f = float(rng.uniform(0.05, 1.0))
        vp = rng.uniform(0, 1, 2)
        top, left, ch, cw = distance.crop_box((h, w), f, vp)
        assert abs(ch - f * h) <= 0.5 + 1e-9 and abs(cw - f * w) <= 0.5 + 1e-9
        assert 0 <= top <= h - ch and 0 <= left <= w - cw
        # unless clamped, the crop centre is within 1 px of the vanishing point
        if 0 < top < h - ch:
            assert abs(top + ch / 2 - vp[1] * h) <= 1.0
        if 0 < left < w - cw:
            assert abs(left + cw / 2 - vp[0] * w) <= 1.0


def test_distance_iou_accumulates_per_fraction():
    acc = distance.DistanceIoU([1.0, 0.5], num_classes=3, mode="crop")
    gt = np.zeros((20, 40), int)
    gt[:, 20:] = 1
    pred = np.zeros_like(gt)
    for f in acc.fractions:
        box = acc.box(gt.shape, f)
        acc.update(f, distance.crop(pred, box), distance.crop(gt, box))
    res = acc.result()
    assert res["fractions"]["1"]["miou"] == pytest.approx((0.5 + 0.0) / 2)
    assert res["fractions"]["0.5"]["num_pixels"] == 10 * 20
    with pytest.raises(ValueError):
        distance.DistanceIoU([1.0], mode="bogus")


def test_streaming_miou_under_xla():
    import tensorflow as tf

    metric = confusion.StreamingMeanIoU(num_classes=5)
    batches = _batches(seed=11, n=2)
    update = tf.function(metric.update_state, jit_compile=True)
    for gt, logits in batches:
        update(gt, logits)
    gt = np.concatenate([b[0] for b in batches])
    pred = np.concatenate([b[1] for b in batches]).argmax(-1)
    np.testing.assert_array_equal(metric.confusion(), _loop_confusion(gt, pred, 5))
