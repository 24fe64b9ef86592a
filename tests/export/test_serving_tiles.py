"""Tiled serving: images above the export's pixel limit are served tile by tile, as the NumPy blend computes."""
import numpy as np
import pytest
import tensorflow as tf
from conftest import build_local_model, standin_config

from gscnn_tf.deploy.tiles import blend_tiles, tile_starts
from gscnn_tf.export import saved_model as sm
from gscnn_tf.export.serving_graph import GSCNNServingModule
from gscnn_tf.export.serving_tiles import tile_starts_tensor

TILE, OVERLAP = (32, 48), 16


def softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def reference(model, image, tile=TILE, overlap=OVERLAP):
    """Independent of the serving graph: the Keras model on each tile (NumPy edge padding up to the
    tile), blended by gscnn_tf.deploy.tiles.blend_tiles (tested against a per-pixel weighted mean)."""
    h, w = image.shape[:2]
    x = np.pad(image.astype(np.float32), [(0, max(0, tile[0] - h)), (0, max(0, tile[1] - w)), (0, 0)], mode="edge")
    out = np.zeros(x.shape[:2] + (20,), np.float32)

    def run_tile(top, left):
        o = model(x[None, top:top + tile[0], left:left + tile[1]], training=False)
        return np.concatenate([softmax(np.asarray(o["seg_logits"])[0]), np.asarray(o["edge"])[0]], -1)

    def finish(begin, end, blended):
        out[begin:end] = blended

    blend_tiles(x.shape[:2], tile, overlap, run_tile, finish)
    return out[:h, :w]


def image(h, w, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([yy * 255.0 / h, xx * 255.0 / w, (3 * yy + xx) % 256], -1) + rng.normal(0, 25, (h, w, 3))
    return np.clip(base, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("length, tile, overlap", [(48, 48, 16), (100, 48, 16), (97, 32, 0), (200, 64, 8), (33, 32, 31)])
def test_tile_starts_in_graph_equal_the_numpy_tiles(length, tile, overlap):
    assert tile_starts_tensor(tf.constant(length), tile, overlap).numpy().tolist() == tile_starts(length, tile, overlap)


@pytest.fixture(scope="module")
def model():
    return build_local_model(num_classes=19)


def module(model, **kw):
    kw.setdefault("max_pixels", TILE[0] * TILE[1])
    return GSCNNServingModule(model, num_classes=19, with_probabilities=True, tile_size=TILE, tile_overlap=OVERLAP, **kw)


@pytest.mark.parametrize("size", [(80, 100), (40, 200), (200, 40)])
def test_large_images_are_tiled_as_the_numpy_blend(model, size):
    pixels = image(*size)
    out = module(model).serve_images(tf.constant(pixels[None]))
    ref = reference(model, pixels)
    probs = out["probabilities"].numpy()[0]
    assert probs.shape == size + (19,)
    np.testing.assert_allclose(probs, ref[..., :19], atol=2e-5)
    np.testing.assert_allclose(out["edge"].numpy()[0], ref[..., 19], atol=2e-5)
    top2 = np.sort(ref[..., :19], -1)[..., -2:]
    clear = top2[..., 1] - top2[..., 0] > 1e-4
    np.testing.assert_array_equal(out["classes"].numpy()[0][clear], np.argmax(ref[..., :19], -1)[clear])
    assert [int(out["height"][0]), int(out["width"][0])] == list(size)


def test_images_within_the_limit_run_whole_and_without_tiles_large_ones_are_refused(model):
    small = image(24, 40, seed=1)  # 960 pixels <= 32 * 48
    tiled, whole = module(model), GSCNNServingModule(model, num_classes=19, with_probabilities=True,
                                                     max_pixels=TILE[0] * TILE[1])
    a = tiled.serve_images(tf.constant(small[None]))
    b = whole.serve_images(tf.constant(small[None]))
    np.testing.assert_array_equal(a["probabilities"].numpy(), b["probabilities"].numpy())
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"80x100 pixels, more than this export.{1,3}s limit of 1536"):
        whole.serve_images(tf.constant(image(80, 100)[None]))
    with pytest.raises(ValueError, match="max_pixels"):
        GSCNNServingModule(model, num_classes=19, tile_size=TILE, tile_overlap=OVERLAP, max_pixels=0)
    with pytest.raises(ValueError, match="multiples of 8"):
        GSCNNServingModule(model, num_classes=19, tile_size=(30, 48), tile_overlap=OVERLAP, max_pixels=100)
    with pytest.raises(ValueError, match=r"tile overlap 32: must be in \[0, 32\)"):
        GSCNNServingModule(model, num_classes=19, tile_size=TILE, tile_overlap=32, max_pixels=100)


def test_saved_model_serves_a_mixed_batch_with_one_image_tiled(model, tmp_path):
    """Through a written and reloaded SavedModel: encoded PNGs, one above the limit (tiled) and one below."""
    big, small = image(80, 100, seed=2), image(24, 40, seed=3)
    path = sm.export_saved_model(model, standin_config(), str(tmp_path / "export"), with_probabilities=True,
                                 max_pixels=TILE[0] * TILE[1], tile_size=TILE, tile_overlap=OVERLAP,
                                 warmup_size=(40, 64))
    serve = tf.saved_model.load(path).signatures["serving_default"]
    out = serve(image_bytes=tf.constant([tf.io.encode_png(big).numpy(), tf.io.encode_png(small).numpy()]))
    assert out["height"].numpy().tolist() == [80, 24] and out["width"].numpy().tolist() == [100, 40]
    np.testing.assert_allclose(out["probabilities"].numpy()[0], reference(model, big)[..., :19], atol=2e-5)
    whole = GSCNNServingModule(model, num_classes=19, with_probabilities=True).serve_images(tf.constant(small[None]))
    np.testing.assert_allclose(out["probabilities"].numpy()[1, :24, :40], whole["probabilities"].numpy()[0], atol=1e-5)
