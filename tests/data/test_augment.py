"""Augmentation ops against independent NumPy / OpenCV computations."""
import cv2
import numpy as np
import pytest
import tensorflow as tf

from gscnn_tf.data import augment as aug

MEAN = (123.68, 116.779, 103.939)


def _blocky_label(h, w, rng, values=(0, 1, 2, 7, 13, 255)):
    """Piecewise-constant label map of 8x8 blocks drawn from ``values``."""
    blocks = rng.choice(np.array(values, np.uint8), size=((h + 7) // 8, (w + 7) // 8))
    return np.kron(blocks, np.ones((8, 8), np.uint8))[:h, :w]


@pytest.fixture
def sample():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(24, 40, 3), dtype=np.uint8)
    label = _blocky_label(24, 40, rng)
    return image, label


def _augment(image, label, seed, **kw):
    args = dict(crop_size=label.shape, pad_color=MEAN, min_scale=1.0, max_scale=1.0, hflip=True,
                color_jitter=0.0, blur_prob=0.0)
    args.update(kw)
    out_image, out_label = aug.augment(tf.constant(image), tf.constant(label), seed=tf.constant(seed), **args)
    return out_image.numpy(), out_label.numpy()


def test_flip_is_exact_and_joint(sample):
    image, label = sample
    seen = set()
    for i in range(16):
        out_image, out_label = _augment(image, label, [7, i])
        assert out_image.dtype == np.float32 and out_label.dtype == np.uint8
        if np.array_equal(out_label, label) and np.array_equal(out_image, image.astype(np.float32)):
            seen.add("same")
        else:
            np.testing.assert_array_equal(out_label, label[:, ::-1])
            np.testing.assert_array_equal(out_image, image[:, ::-1].astype(np.float32))
            seen.add("flipped")
    assert seen == {"same", "flipped"}
    # hflip=False never flips.
    for i in range(8):
        out_image, out_label = _augment(image, label, [7, i], hflip=False)
        np.testing.assert_array_equal(out_label, label)


def test_scale_matches_opencv_and_label_values_are_a_subset(sample):
    image, label = sample
    for scale in (0.5, 0.75, 1.6, 2.0):
        out_image, out_label = aug.scale_image_and_label(tf.constant(image), tf.constant(label), scale)
        h, w = round(24 * scale), round(40 * scale)
        assert out_image.shape == (h, w, 3) and out_label.shape == (h, w)
        expected = cv2.resize(image.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
        np.testing.assert_allclose(out_image.numpy(), expected, atol=1e-3)
        # Nearest neighbour with half-pixel centres = OpenCV's INTER_NEAREST_EXACT.
        np.testing.assert_array_equal(out_label.numpy(), cv2.resize(label, (w, h), interpolation=cv2.INTER_NEAREST_EXACT))
        assert set(np.unique(out_label.numpy())) <= set(np.unique(label))


def test_random_scale_respects_the_range():
    image = tf.zeros((100, 160, 3), tf.uint8)
    label = tf.zeros((100, 160), tf.uint8)
    heights = []
    for i in range(40):
        # A crop larger than any scaled size: the window is the whole scaled image.
        out_image, out_label = aug.random_scale_and_crop(image, label, 0.5, 2.0, (400, 400), aug.RandomSource([3, i]))
        h, w = out_label.shape
        assert 50 <= h <= 200 and 80 <= w <= 320
        assert abs(w / h - 1.6) < 0.03  # aspect ratio kept
        heights.append(h)
    assert min(heights) < 70 and max(heights) > 170  # actually spans the range
    with pytest.raises(ValueError):
        aug.augment(image, label, crop_size=(8, 8), pad_color=MEAN, min_scale=2.0, max_scale=1.0)


def test_crop_of_a_large_image_is_a_window_of_the_original(sample):
    image, label = sample
    for i in range(6):
        out_image, out_label = _augment(image, label, [5, i], crop_size=(16, 24), hflip=False)
        assert out_image.shape == (16, 24, 3)
        hits = [
            (y, x)
            for y in range(24 - 16 + 1)
            for x in range(40 - 24 + 1)
            if np.array_equal(image[y : y + 16, x : x + 24].astype(np.float32), out_image)
        ]
        assert len(hits) == 1
        y, x = hits[0]
        np.testing.assert_array_equal(out_label, label[y : y + 16, x : x + 24])


def test_padding_uses_ignore_label_and_mean_colour(sample):
    image, label = sample
    label = np.where(label == 255, 0, label).astype(np.uint8)  # source has no ignore pixels
    offsets = set()
    for i in range(8):
        out_image, out_label = _augment(image, label, [9, i], crop_size=(32, 48), hflip=False)
        assert out_image.shape == (32, 48, 3) and out_label.shape == (32, 48)
        valid = out_label != 255
        ys, xs = np.nonzero(valid)
        y0, x0 = ys.min(), xs.min()
        assert valid.sum() == 24 * 40 and (ys.max() - y0 + 1, xs.max() - x0 + 1) == (24, 40)
        np.testing.assert_array_equal(out_label[y0 : y0 + 24, x0 : x0 + 40], label)
        np.testing.assert_array_equal(out_image[y0 : y0 + 24, x0 : x0 + 40], image.astype(np.float32))
        np.testing.assert_array_equal(out_image[~valid], np.broadcast_to(np.float32(MEAN), ((~valid).sum(), 3)))
        offsets.add((y0, x0))
    assert len(offsets) > 1  # the image lands at random offsets inside the crop


def test_padding_stays_mean_colour_with_jitter_and_blur(sample):
    image, label = sample
    label = np.where(label == 255, 0, label).astype(np.uint8)
    out_image, out_label = _augment(image, label, [1, 2], crop_size=(40, 64), color_jitter=0.25, blur_prob=1.0,
                                    min_scale=0.5, max_scale=1.0)
    pad = out_label == 255
    assert pad.any()
    np.testing.assert_array_equal(out_image[pad], np.broadcast_to(np.float32(MEAN), (pad.sum(), 3)))


def test_deterministic_mode_is_reproducible_and_seed_dependent(sample):
    image, label = sample
    kw = dict(crop_size=(20, 20), min_scale=0.5, max_scale=2.0, color_jitter=0.25, blur_prob=0.5)
    a = _augment(image, label, [11, 3], **kw)
    b = _augment(image, label, [11, 3], **kw)
    c = _augment(image, label, [12, 3], **kw)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])
    # Unseeded (stateful) mode still gives valid crops.
    out_image, out_label = aug.augment(tf.constant(image), tf.constant(label), crop_size=(20, 20), pad_color=MEAN)
    assert out_image.shape == (20, 20, 3) and out_label.shape == (20, 20)
    assert set(np.unique(out_label.numpy())) <= set(np.unique(label)) | {255}


def _numpy_color(image, brightness, contrast, saturation, hue):
    """torchvision ColorJitter arithmetic in NumPy + OpenCV's float HSV for the hue."""
    x = np.clip(image.astype(np.float32) * brightness, 0, 255)
    gray = x @ np.float32([0.299, 0.587, 0.114])
    x = np.clip((x - gray.mean()) * contrast + gray.mean(), 0, 255)
    gray = (x @ np.float32([0.299, 0.587, 0.114]))[..., None]
    x = np.clip((x - gray) * saturation + gray, 0, 255)
    hsv = cv2.cvtColor((x / 255).astype(np.float32), cv2.COLOR_RGB2HSV)
    hsv[..., 0] = np.mod(hsv[..., 0] + hue * 360.0, 360.0)
    return np.clip(cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB) * 255, 0, 255)


@pytest.mark.parametrize("factors", [(1.2, 0.8, 1.25, 0.1), (0.75, 1.25, 0.8, -0.25), (1.0, 1.0, 1.0, 0.0)])
def test_color_adjustment_matches_numpy(sample, factors):
    image, _ = sample
    out = aug.adjust_color(tf.constant(image), *factors).numpy()
    np.testing.assert_allclose(out, _numpy_color(image, *factors), atol=0.05)
    if factors == (1.0, 1.0, 1.0, 0.0):
        np.testing.assert_allclose(out, image, atol=1e-3)


def test_color_jitter_strength_zero_is_identity_and_nonzero_changes(sample):
    image, _ = sample
    rng = aug.RandomSource([4, 4])
    np.testing.assert_array_equal(aug.random_color_jitter(tf.constant(image), 0.0, rng).numpy(), image)
    out = aug.random_color_jitter(tf.constant(image), 0.25, rng).numpy()
    assert out.min() >= 0 and out.max() <= 255 and np.abs(out - image).mean() > 0.5


@pytest.mark.parametrize("sigma", [0.15, 0.7, 1.3])
def test_gaussian_blur_matches_opencv(sample, sigma):
    image, _ = sample
    out = aug.gaussian_blur(tf.constant(image), sigma).numpy()
    r = aug.BLUR_RADIUS
    expected = cv2.GaussianBlur(image.astype(np.float32), (2 * r + 1, 2 * r + 1), sigma, borderType=cv2.BORDER_REFLECT_101)
    np.testing.assert_allclose(out, expected, atol=1e-3)


def test_blur_probability(sample):
    image, _ = sample
    x = tf.constant(image)
    never = [aug.random_blur(x, 0.0, aug.RandomSource([0, i])).numpy() for i in range(5)]
    always = [aug.random_blur(x, 1.0, aug.RandomSource([0, i])).numpy() for i in range(5)]
    assert all(np.array_equal(n, image) for n in never)
    sigmas = [float(aug.RandomSource([0, i]).uniform(aug._TAG_BLUR_SIGMA, *aug.BLUR_SIGMA_RANGE)) for i in range(5)]
    assert all(0.15 <= s <= 1.3 for s in sigmas) and len(set(sigmas)) == 5
    for a, s in zip(always, sigmas):
        np.testing.assert_allclose(a, aug.gaussian_blur(x, s).numpy(), atol=1e-5)
    assert sum(not np.allclose(a, image, atol=0.5) for a in always) >= 2
    half = [np.array_equal(aug.random_blur(x, 0.5, aug.RandomSource([1, i])).numpy(), image) for i in range(40)]
    assert 8 <= sum(half) <= 32


@pytest.mark.parametrize("scale", [0.5, 0.83, 1.0, 1.37, 2.0])
def test_fused_scale_and_crop_equals_full_resize_then_slice(scale):
    rng = np.random.default_rng(5)
    image = rng.integers(0, 256, size=(37, 53, 3), dtype=np.uint8)
    label = rng.integers(0, 19, size=(37, 53), dtype=np.uint8)
    full_image, full_label = aug.scale_image_and_label(tf.constant(image), tf.constant(label), scale)
    oh, ow = full_label.shape
    windows = [(0, 0, oh, ow), (0, 0, min(oh, 9), min(ow, 11)), (oh - 5, ow - 7, 5, 7), (oh // 3, ow // 2, oh // 2, ow // 3)]
    for y0, x0, h, w in windows:
        out_image, out_label = aug.scale_and_crop(tf.constant(image), tf.constant(label), (oh, ow), (y0, x0, h, w))
        np.testing.assert_allclose(out_image.numpy(), full_image.numpy()[y0 : y0 + h, x0 : x0 + w], atol=1e-4)
        np.testing.assert_array_equal(out_label.numpy(), full_label.numpy()[y0 : y0 + h, x0 : x0 + w])


def test_augmented_crop_is_a_window_of_the_scaled_image(sample):
    image, label = sample
    for i in range(4):
        out_image, out_label = _augment(image, label, [21, i], crop_size=(16, 24), hflip=False, min_scale=0.9, max_scale=1.9)
        scale = float(aug.RandomSource([21, i]).uniform(aug._TAG_SCALE, 0.9, 1.9))
        full_image, full_label = aug.scale_image_and_label(tf.constant(image), tf.constant(label), scale)
        full_image, full_label = full_image.numpy(), full_label.numpy()
        oh, ow = full_label.shape
        hits = [(y, x) for y in range(oh - 16 + 1) for x in range(ow - 24 + 1)
                if np.allclose(full_image[y : y + 16, x : x + 24], out_image, atol=1e-4)]
        assert len(hits) == 1
        y, x = hits[0]
        np.testing.assert_array_equal(out_label, full_label[y : y + 16, x : x + 24])


def test_default_padding_is_black_as_the_official_code(sample):
    image, label = sample
    label = np.where(label == 255, 0, label).astype(np.uint8)
    out_image, out_label = aug.augment(tf.constant(image), tf.constant(label), crop_size=(40, 64), min_scale=0.5,
                                       max_scale=1.0, color_jitter=0.25, blur_prob=1.0, seed=tf.constant([3, 4]))
    pad = out_label.numpy() == 255
    assert pad.any() and aug.PAD_COLOR == (0.0, 0.0, 0.0)
    assert not out_image.numpy()[pad].any()
    assert out_image.numpy().min() >= 0.0 and out_image.numpy().max() <= 255.0  # the model's input range
