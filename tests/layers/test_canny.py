"""CannyEdges against OpenCV's cv2.Canny (the official Gated-SCNN loader's image gradients).

Measured with opencv-python-headless 4.14 (this venv): the layer reproduces cv2.Canny(img, 10, 100)
*pixel for pixel* on every image tried, i.e. 0 differing pixels and F = 1.000 (1-px tolerance):
astronaut 512x512 (40015 edge px), coffee 400x600 (49539), chelsea 300x451 (28587), procedural
street 256x512 (8120) and 512x1024 (30047); the same with L2gradient=True (39165, 48999, 27054,
7969, 30785 edge px) and after cv2.GaussianBlur (sigma 0.8, 1, 2).
The tests therefore assert exact equality (plus an F-score floor, reported on failure).
"""
from __future__ import annotations

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")
skdata = pytest.importorskip("skimage.data")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from gscnn_tf.layers.canny import CannyEdges, gaussian_kernel_fixed_point, gaussian_kernel_size  # noqa: E402

# ARCHITECTURE.md "Image normalisation" (== gscnn_tf.backbones.normalization_for).
MOBILENET_NORM = ((127.5, 127.5, 127.5), (127.5, 127.5, 127.5))


# ----------------------------------------------------------------------------- helpers
def street_scene(h=256, w=512, seed=0):
    """Procedural street-like uint8 RGB image: sky gradient, buildings with windows, road
    trapezoid with lane marks, sidewalk, poles, cars, a tree, slight blur and sensor noise."""
    rng = np.random.default_rng(seed)
    horizon = h // 2
    t = np.linspace(0, 1, horizon)[:, None, None]
    img = np.empty((h, w, 3), np.float32)
    img[:horizon] = (1 - t) * np.array([110, 160, 230]) + t * np.array([200, 215, 235])
    img[horizon:] = (90, 90, 95)
    img = img.astype(np.uint8)
    x = 0
    while x < w:
        bw, bh = int(rng.integers(w // 12, w // 5)), int(rng.integers(h // 6, horizon - 5))
        cv2.rectangle(img, (x, horizon - bh), (x + bw, horizon), tuple(int(c) for c in rng.integers(60, 200, 3)), -1)
        for wy in range(horizon - bh + 6, horizon - 8, 14):
            for wx in range(x + 4, x + bw - 6, 12):
                cv2.rectangle(img, (wx, wy), (wx + 5, wy + 7), (40, 50, 70), -1)
        x += bw + int(rng.integers(0, 10))
    road = np.array([[w * 0.45, horizon], [w * 0.55, horizon], [w * 0.95, h], [w * 0.05, h]], np.int32)
    cv2.fillPoly(img, [road], (70, 70, 75))
    for k in range(8):
        y0 = horizon + (h - horizon) * k / 8
        cv2.line(img, (w // 2, int(y0)), (w // 2, int(y0 + (h - horizon) / 16)), (230, 230, 230), 1 + k // 2)
    sidewalk = np.array([[0, h], [w * 0.05, h], [w * 0.45, horizon], [0, horizon + 4]], np.int32)
    cv2.fillPoly(img, [sidewalk], (150, 140, 130))
    for px in rng.integers(0, w, 4):
        cv2.line(img, (int(px), horizon + 20), (int(px), horizon - h // 3), (50, 50, 50), 3)
    for _ in range(3):
        cx, cy = int(rng.integers(w * 0.2, w * 0.8)), int(rng.integers(horizon + h // 10, h - h // 10))
        s = (cy - horizon) / (h - horizon) + 0.3
        colour = tuple(int(c) for c in rng.integers(20, 255, 3))
        cv2.rectangle(img, (int(cx - 40 * s), int(cy - 25 * s)), (int(cx + 40 * s), cy), colour, -1)
        for dx in (-25, 25):
            cv2.circle(img, (int(cx + dx * s), cy), int(8 * s), (20, 20, 20), -1, lineType=cv2.LINE_AA)
    cv2.ellipse(img, (int(w * 0.85), horizon - 30), (40, 50), 0, 0, 360, (40, 110, 40), -1, lineType=cv2.LINE_AA)
    img = cv2.GaussianBlur(img, (3, 3), 0.8)
    return np.clip(img + rng.normal(0, 4, img.shape), 0, 255).astype(np.uint8)


def f_score(pred, ref, tol=1):
    """Edge-pixel F-score: a pixel matches if the other map has an edge within ``tol`` px (Chebyshev)."""
    pred, ref = pred.astype(bool), ref.astype(bool)
    if not pred.any() and not ref.any():
        return 1.0
    kernel = np.ones((2 * tol + 1, 2 * tol + 1), np.uint8)
    near_ref = cv2.dilate(ref.astype(np.uint8), kernel) > 0
    near_pred = cv2.dilate(pred.astype(np.uint8), kernel) > 0
    precision = (pred & near_ref).sum() / max(pred.sum(), 1)
    recall = (ref & near_pred).sum() / max(ref.sum(), 1)
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def normalise(img, mean, std):
    """What the data pipeline does: float32 (rgb - mean) / std."""
    return (img.astype(np.float32) - np.float32(mean)) / np.float32(std)


def run(layer, batch):
    return np.asarray(layer(np.asarray(batch, np.float32)))


def assert_matches(out, ref, name):
    out, ref = np.asarray(out).astype(bool), np.asarray(ref) > 0
    diff, f = int((out != ref).sum()), f_score(out, ref)
    assert f >= 0.999, f"{name}: F={f:.4f}, {diff} differing pixels of {ref.size}"
    assert diff == 0, f"{name}: {diff} differing pixels of {ref.size} (F={f:.4f})"


PHOTOS = {
    "astronaut": lambda: skdata.astronaut(),
    "coffee": lambda: skdata.coffee(),
    "chelsea": lambda: skdata.chelsea(),
    "street": lambda: street_scene(256, 512),
}


# ----------------------------------------------------------------------------- agreement with cv2
def test_f_score_helper_discriminates():
    edges = np.zeros((20, 20), bool)
    edges[5:15, 10] = True
    assert f_score(edges, edges) == 1.0
    assert f_score(np.roll(edges, 1, axis=1), edges) == 1.0  # within tolerance
    assert f_score(np.roll(edges, 3, axis=1), edges) == 0.0


@pytest.mark.parametrize("portable", [False, True], ids=["bitpacked", "portable"])
@pytest.mark.parametrize("name", sorted(PHOTOS))
def test_matches_cv2_canny_on_photos(name, portable):
    img = PHOTOS[name]()
    out = run(CannyEdges(portable=portable), img[None])
    assert out.shape == (1,) + img.shape[:2] + (1,) and out.dtype == np.float32
    assert set(np.unique(out)) <= {0.0, 1.0}
    assert_matches(out[0, ..., 0], cv2.Canny(img, 10, 100), name)


def test_per_channel_max_not_grayscale():
    """cv2.Canny on colour uses the per-pixel strongest channel; a grayscale shortcut would not match."""
    img = skdata.astronaut()[:192, :192]
    out = run(CannyEdges(), img[None])[0, ..., 0] > 0
    gray = cv2.Canny(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY), 10, 100) > 0
    assert (out != gray).sum() > 500
    assert_matches(out, cv2.Canny(img, 10, 100), "astronaut crop")


def test_l2_gradient_matches_cv2():
    img = skdata.coffee()
    out = run(CannyEdges(l2_gradient=True), img[None])[0, ..., 0]
    assert_matches(out, cv2.Canny(img, 10, 100, L2gradient=True), "coffee L2")


@pytest.mark.parametrize("thresholds", [(10, 100), (50, 150), (150, 50), (20.5, 60.7)])
def test_thresholds_and_tie_breaking_on_synthetic_steps(thresholds):
    """Steps whose two sides have exactly equal magnitudes (both polarities, 0/90/45 degrees):
    the edge lands where OpenCV's asymmetric '>' / '>=' comparisons put it."""
    img = np.zeros((48, 64, 3), np.uint8)
    img[:, 20:] = (100, 40, 10)  # vertical step
    img[30:, :] = (10, 200, 60)  # horizontal step, opposite polarity in channel 0
    yy, xx = np.mgrid[:48, :64]
    img[(xx - yy > 30)] = (250, 250, 250)  # 45-degree step
    img[(xx + yy < 14)] = (0, 0, 90)  # -45-degree step
    img[5:9, 40:44] = 60  # small square (corners, short edges)
    low, high = thresholds
    out = run(CannyEdges(low_threshold=low, high_threshold=high), img[None])[0, ..., 0]
    ref = cv2.Canny(img, low, high)
    assert ref.any()
    assert_matches(out, ref, f"synthetic {thresholds}")


def test_batch_and_non_square_sizes():
    base = street_scene(160, 320, seed=3)
    crops = [base[:97, :143], base[40:137, 100:243], skdata.chelsea()[50:147, 200:343]]
    out = run(CannyEdges(), np.stack(crops))
    assert out.shape == (3, 97, 143, 1)
    for i, crop in enumerate(crops):
        assert_matches(out[i, ..., 0], cv2.Canny(np.ascontiguousarray(crop), 10, 100), f"crop {i}")
    # tall image, odd sizes
    tall = np.ascontiguousarray(skdata.astronaut()[:131, 300:357])
    assert_matches(run(CannyEdges(), tall[None])[0, ..., 0], cv2.Canny(tall, 10, 100), "tall")


def test_tiny_images_and_noise_match_cv2():
    """Borders dominate tiny images; uniform noise stresses ties and long weak chains."""
    rng = np.random.default_rng(0)
    for h, w in [(1, 1), (1, 7), (2, 2), (3, 5), (7, 1)]:
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        assert_matches(run(CannyEdges(), img[None])[0, ..., 0], cv2.Canny(img, 10, 100), f"{h}x{w}")
    img = rng.integers(0, 256, (64, 80, 3), dtype=np.uint8)
    for low, high in [(10, 100), (200, 600)]:
        out = run(CannyEdges(low, high), img[None])[0, ..., 0]
        assert_matches(out, cv2.Canny(img, low, high), f"noise {low}/{high}")


def test_constant_image_has_no_edges():
    img = np.full((1, 33, 47, 3), 77, np.uint8)
    out = run(CannyEdges(), img)
    assert out.shape == (1, 33, 47, 1) and not out.any()
    out = run(CannyEdges(smoothing_sigma=1.5), img.astype(np.float32))
    assert not out.any()


# ----------------------------------------------------------------------------- float input
def test_float_rgb_input_rounds_to_its_pixels():
    """Float RGB (e.g. after colour jitter) within half a level of the uint8 image gives its edges."""
    img = skdata.chelsea()
    jitter = np.random.default_rng(0).uniform(-0.49, 0.49, img.shape).astype(np.float32)
    out = run(CannyEdges(), (img.astype(np.float32) + jitter)[None])[0, ..., 0]
    assert_matches(out, cv2.Canny(img, 10, 100), "chelsea + jitter")


def test_normalised_input_is_not_what_the_layer_reads():
    """Sanity check that the test above can fail: a backbone-normalised image in "rgb" mode."""
    img = skdata.chelsea()
    out = run(CannyEdges(), normalise(img, *MOBILENET_NORM)[None])[0, ..., 0]
    assert f_score(out, cv2.Canny(img, 10, 100)) < 0.5


# ----------------------------------------------------------------------------- smoothing
def test_gaussian_kernel_matches_opencv():
    for sigma in (0.5, 0.8, 1.0, 1.4, 2.0, 3.3):
        k = np.array(gaussian_kernel_fixed_point(sigma))
        n = gaussian_kernel_size(sigma)
        assert len(k) == n and k.sum() == 256 and (k == k[::-1]).all()
        np.testing.assert_allclose(k / 256.0, cv2.getGaussianKernel(n, sigma)[:, 0], atol=1.0 / 256)


@pytest.mark.parametrize("sigma", [0.8, 1.0, 2.0])
def test_smoothing_matches_gaussian_blur_then_canny(sigma):
    img = skdata.astronaut()[100:356, 50:434]
    k = gaussian_kernel_size(sigma)
    blurred = cv2.GaussianBlur(img, (k, k), sigma)
    # ksize (0, 0) lets OpenCV choose the size itself: same as ours.
    np.testing.assert_array_equal(blurred, cv2.GaussianBlur(img, (0, 0), sigma))
    ref = cv2.Canny(blurred, 10, 100)
    assert (ref != cv2.Canny(img, 10, 100)).sum() > 1000  # smoothing matters on this crop
    out = run(CannyEdges(smoothing_sigma=sigma), img[None])
    assert_matches(out[0, ..., 0], ref, f"sigma {sigma}")


# ----------------------------------------------------------------------------- hysteresis bound
@pytest.mark.parametrize("portable", [False, True], ids=["bitpacked", "portable"])
def test_hysteresis_bound_trades_edges_for_iterations(portable):
    img = skdata.coffee()[:200, :300]
    ref = cv2.Canny(img, 10, 100) > 0
    outs = {n: run(CannyEdges(max_hysteresis_iterations=n, portable=portable), img[None])[0, ..., 0] > 0
            for n in (0, 2, 8, None)}
    assert_matches(outs[None], ref, "unbounded")
    counts = [outs[n].sum() for n in (0, 2, 8)]
    assert counts[0] < counts[1] < counts[2] < ref.sum()  # each bound drops some weak chains
    for n in (0, 2, 8):
        assert not (outs[n] & ~ref).any()  # never extra edges
    # Independent reference for the bound: cv2.Canny(img, t, t) is exactly the NMS survivors
    # above t, so bound n = n masked 3x3 dilations of Canny(100, 100) inside Canny(10, 10).
    candidates, grown = cv2.Canny(img, 10, 10) > 0, cv2.Canny(img, 100, 100) > 0
    for n in range(9):
        if n in outs:
            assert_matches(outs[n], grown, f"bound {n}")
        grown = (cv2.dilate(grown.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0) & candidates


def test_portable_graph_has_no_bitwise_ops_and_the_switch_is_restored():
    from gscnn_tf.layers.canny import portable_canny

    inputs = keras.Input((None, None, 3))
    inner = keras.Model(inputs, CannyEdges(name="canny")(inputs))
    outer = keras.Model(inputs, inner(inputs))  # nested, as GatedSCNN inside an export wrapper

    def op_types():
        fn = tf.function(lambda x: outer(x)).get_concrete_function(tf.TensorSpec((1, 32, 32, 3), tf.float32))
        graph = fn.graph.as_graph_def()  # the while loop's body is a library function
        return {n.op for n in graph.node} | {n.op for f in graph.library.function for n in f.node_def}

    bit_ops = {"BitwiseAnd", "BitwiseOr", "BitwiseXor", "LeftShift", "RightShift"}
    assert op_types() & bit_ops  # the default (bit-packed) graph uses them ...
    with portable_canny(outer) as layers:
        assert [layer.name for layer in layers] == ["canny"]
        assert not op_types() & bit_ops  # ... the portable one does not
    assert layers[0].portable is False


# ----------------------------------------------------------------------------- Keras integration
def test_model_with_dynamic_shape_and_keras_round_trip(tmp_path):
    inp = keras.Input((None, None, 3), name="image")
    model = keras.Model(inp, CannyEdges(name="canny", low_threshold=20)(inp))
    imgs = [skdata.chelsea()[:120, :200], street_scene(64, 96, seed=1)]
    outs = []
    for img in imgs:
        out = model.predict(img[None].astype(np.float32), verbose=0)
        assert out.shape == (1,) + img.shape[:2] + (1,)
        assert_matches(out[0, ..., 0], cv2.Canny(np.ascontiguousarray(img), 20, 100), "model")
        outs.append(out)
    path = str(tmp_path / "canny.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    layer = loaded.get_layer("canny")
    assert isinstance(layer, CannyEdges) and layer.low_threshold == 20
    for img, out in zip(imgs, outs):
        np.testing.assert_array_equal(loaded.predict(img[None].astype(np.float32), verbose=0), out)


def test_get_config_round_trip():
    layer = CannyEdges(
        low_threshold=20, high_threshold=80, smoothing_sigma=1.2, max_hysteresis_iterations=None,
        l2_gradient=True, name="edges", input_mode="official_uint8_wrap",
    )
    config = layer.get_config()
    clone = CannyEdges.from_config(config)
    assert clone.get_config() == config
    assert config["input_mode"] == "official_uint8_wrap" and config["max_hysteresis_iterations"] is None
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert isinstance(restored, CannyEdges) and restored.get_config() == config
    img = normalise(street_scene(48, 64, seed=2), *MOBILENET_NORM)[None]
    np.testing.assert_array_equal(run(layer, img), run(clone, img))


def test_no_gradient_no_weights():
    layer = CannyEdges()
    x = tf.Variable(street_scene(32, 48, seed=4)[None].astype(np.float32))
    with tf.GradientTape() as tape:
        edges = tf.reduce_sum(layer(x))
    assert float(edges) > 0
    grad = tape.gradient(edges, x)
    assert grad is None or not np.any(grad)
    assert not layer.trainable and not layer.weights


def test_mixed_precision_computes_in_float32():
    img = skdata.chelsea()[:96, :160]
    ref = cv2.Canny(np.ascontiguousarray(img), 10, 100)
    previous = keras.config.dtype_policy()
    try:
        keras.config.set_dtype_policy("mixed_float16")
        layer = CannyEdges()
        assert layer.compute_dtype == "float32"
        x = img[None].astype(np.float32)
        inp = keras.Input((None, None, 3))
        model = keras.Model(inp, layer(inp))
        out = model.predict(x, verbose=0)
        assert out.dtype == np.float32
        assert_matches(out[0, ..., 0], ref, "mixed_float16")
        # A float16 tensor (e.g. from a float16 branch) is up-cast first.
        out16 = np.asarray(layer(tf.constant(x, tf.float16)))
        assert out16.dtype == np.float32
        assert_matches(out16[0, ..., 0], ref, "float16 input")
    finally:
        keras.config.set_dtype_policy(previous)


@pytest.mark.slow  # ~8 s of XLA compilation on 2 shared cores
def test_xla_compiles_and_matches():
    img = street_scene(96, 160, seed=5)
    layer = CannyEdges(smoothing_sigma=1.0)
    out = tf.function(layer.__call__, jit_compile=True)(tf.constant(img[None], tf.float32)).numpy()
    assert_matches(out[0, ..., 0], cv2.Canny(cv2.GaussianBlur(img, (0, 0), 1.0), 10, 100), "xla")


def test_saved_model_export_embeds_canny(tmp_path):
    """The point of the layer: an exported SavedModel computes the edges itself, any image size."""
    inp = keras.Input((None, None, 3), name="image")
    model = keras.Model(inp, CannyEdges()(inp))
    path = str(tmp_path / "export")
    model.export(path, format="tf_saved_model", verbose=False)
    serve = tf.saved_model.load(path).serve
    for img in (street_scene(64, 96, seed=6), skdata.coffee()[:70, :110]):
        out = serve(tf.constant(img[None].astype(np.float32))).numpy()
        assert_matches(out[0, ..., 0], cv2.Canny(np.ascontiguousarray(img), 10, 100), "saved model")
