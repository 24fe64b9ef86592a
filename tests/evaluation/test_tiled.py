"""Tiled (sliding-window) inference: tile coverage, blending weights, agreement with whole-image inference."""
import numpy as np
import pytest
import tensorflow as tf
from conftest import build_local_model, build_tiny_model

from gscnn_tf.config import ConfigError, EvalConfig, load_config
from gscnn_tf.deploy.tiles import blend_tiles, blend_window, tile_grid, tile_starts
from gscnn_tf.evaluation.evaluate import evaluate
from gscnn_tf.evaluation.inference import MultiScalePredictor
from gscnn_tf.evaluation.tiled import TiledPredictor, make_predictor

NUM_CLASSES = 19


def noisy_image(height, width, seed=0):
    """(1, H, W, 3) float32 0..255: smooth gradients plus noise, so neighbouring pixels' classes differ."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([yy * 255.0 / height, xx * 255.0 / width, (yy + xx) % 256], axis=-1)
    return np.clip(base + rng.normal(0, 40, base.shape), 0, 255).astype(np.float32)[None]


def whole_image_softmax(model, image):
    """The reference: the model on the whole image at once, softmax in NumPy."""
    logits = model(tf.constant(image), training=False)["seg_logits"].numpy()[0].astype(np.float64)
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


# ----------------------------------------------------------------------------- tile geometry and blending


@pytest.mark.parametrize("size,tile,overlap", [((64, 128), (32, 48), 16), ((100, 37), (32, 32), 0),
                                               ((17, 23), (32, 32), 8), ((96, 96), (32, 32), 31)])
def test_tile_grid_covers_every_pixel_with_tiles_inside_the_image(size, tile, overlap):
    covered = np.zeros(size, np.int32)
    th, tw = min(tile[0], size[0]), min(tile[1], size[1])
    positions = tile_grid(size, tile, overlap)
    assert len(set(positions)) == len(positions)
    for top, left in positions:
        assert 0 <= top and top + th <= size[0] and 0 <= left and left + tw <= size[1]
        covered[top:top + th, left:left + tw] += 1
    assert covered.min() >= 1
    if overlap and size[0] > tile[0] and size[1] > tile[1]:
        assert covered.max() >= 2  # neighbours do overlap


def test_linear_window_is_highest_in_the_centre_positive_and_cross_fades():
    w = blend_window(32, 48, 8)
    assert w.shape == (32, 48) and w.dtype == np.float32
    assert w.min() > 0 and w.max() == 1.0 and w[16, 24] == 1.0
    assert w[0, 0] < w[4, 4] < w[8, 8]
    assert np.allclose(w, w[::-1, ::-1])  # symmetric
    np.testing.assert_array_equal(blend_window(32, 48, 8, "uniform"), np.ones((32, 48)))
    np.testing.assert_array_equal(blend_window(32, 48, 0), np.ones((32, 48)))
    # Tiles that step by exactly tile - overlap: the weights of the tiles covering an interior pixel sum to 1,
    # so blending maps of ones with the "uniform"-normalised sum gives the summed weights directly.
    size = (8 + 3 * 24, 8 + 2 * 40)
    total = np.zeros(size)
    for top, left in tile_grid(size, (32, 48), 8):
        total[top:top + 32, left:left + 48] += w
    np.testing.assert_allclose(total[8:-8, 8:-8], 1.0, atol=1e-6)
    with pytest.raises(ValueError):
        blend_window(8, 8, 2, "gaussian")


def _blend(size, tile, overlap, tiles, window="linear"):
    """blend_tiles with maps from ``tiles`` {(top, left): values}; -> (result, bands, tiles run in order)."""
    channels = next(iter(tiles.values())).shape[-1] if next(iter(tiles.values())).ndim == 3 else 1
    out = np.full(size + (channels,), np.nan, np.float32)
    bands, order = [], []

    def run_tile(top, left):
        order.append((top, left))
        return tiles[(top, left)]

    def finish(begin, end, blended):
        bands.append((begin, end))
        out[begin:end] = blended

    blend_tiles(size, tile, overlap, run_tile, finish, window)
    return out, bands, order


@pytest.mark.parametrize("window", ["linear", "uniform"])
@pytest.mark.parametrize("size, tile, overlap", [((40, 70), (16, 24), 6), ((50, 30), (16, 32), 0), ((12, 20), (16, 24), 4)])
def test_blended_values_equal_an_independent_weighted_mean(window, size, tile, overlap):
    channels = 3
    rng = np.random.default_rng(1)
    th, tw = min(tile[0], size[0]), min(tile[1], size[1])
    tiles = {pos: rng.random((th, tw, channels), dtype=np.float32) for pos in tile_grid(size, tile, overlap)}
    result, bands, order = _blend(size, tile, overlap, tiles, window)
    assert order == tile_grid(size, tile, overlap)  # each tile run once, rows of tiles in order
    # Bands come in order and cover every image row exactly once.
    assert bands[0][0] == 0 and bands[-1][1] == size[0]
    assert all(a[1] == b[0] and a[0] < a[1] for a, b in zip(bands, bands[1:]))

    # Independently: per pixel, the weighted mean over the tiles that contain it.
    def weight(i, n):
        if window == "uniform" or overlap == 0:
            return 1.0
        return min(1.0, (i + 0.5) / overlap, (n - i - 0.5) / overlap)

    expected = np.zeros(size + (channels,))
    for y in range(size[0]):
        for x in range(size[1]):
            num, den = np.zeros(channels), 0.0
            for (top, left), values in tiles.items():
                if top <= y < top + th and left <= x < left + tw:
                    wt = weight(y - top, th) * weight(x - left, tw)
                    num += wt * values[y - top, x - left]
                    den += wt
            expected[y, x] = num / den
    np.testing.assert_allclose(result, expected, rtol=1e-5, atol=1e-6)


def test_blend_streams_rows_and_holds_one_row_of_tiles():
    """Bands are handed over as soon as no later tile covers them: before the next row of tiles runs."""
    size, tile, overlap = (100, 40), (32, 40), 8
    seen = []

    def run_tile(top, left):
        seen.append(("tile", top))
        return np.ones((32, 40), np.float32)

    blend_tiles(size, tile, overlap, run_tile, lambda b, e, v: seen.append(("band", b, e, v.shape)))
    starts = tile_starts(100, 32, 8)  # [0, 24, 48, 68]
    expected = []
    for i, top in enumerate(starts):
        end = starts[i + 1] if i + 1 < len(starts) else 100
        expected += [("tile", top), ("band", top, end, (end - top, 40, 1))]
    assert seen == expected


def test_blend_refuses_wrong_tile_shapes():
    with pytest.raises(ValueError, match=r"tile at \(0, 0\).*shape"):
        blend_tiles((40, 40), (32, 32), 8, lambda t, l: np.zeros((32, 31, 2)), lambda *a: None)


# ----------------------------------------------------------------------------- the TensorFlow predictor


def test_tiles_of_a_pointwise_model_reproduce_the_whole_image_exactly():
    model = build_tiny_model()  # 1x1 convolutions: a pixel's output does not depend on its tile
    image = noisy_image(64, 128)
    predictor = TiledPredictor(model, (32, 48), overlap=16)
    probs = predictor.probability_map(image)
    reference = whole_image_softmax(model, image)
    assert probs.shape == (64, 128, NUM_CLASSES) and probs.dtype == np.float32
    np.testing.assert_allclose(probs, reference, atol=1e-5)
    np.testing.assert_array_equal(predictor.labels(image), reference.argmax(-1))
    assert predictor.tiles_run == 2 * len(tile_grid((64, 128), (32, 48), 16))  # probability_map, then labels


def test_tiled_agrees_with_the_whole_image_on_a_convolutional_model():
    model = build_local_model()
    image = noisy_image(64, 128, seed=2)
    reference = whole_image_softmax(model, image).argmax(-1)
    tiled = TiledPredictor(model, (32, 48), overlap=16).labels(image)
    agreement = float((tiled == reference).mean())
    assert agreement >= 0.99, agreement
    assert len(np.unique(reference)) > 3  # the comparison is not between two constant maps
    # Without overlap every tile border cuts the network's context: less agreement than with blending.
    hard = TiledPredictor(model, (32, 48), overlap=0).labels(image)
    assert (hard == reference).mean() < agreement


def test_tiled_multiscale_flip_agrees_with_whole_image_multiscale_flip():
    model = build_local_model(seed=1)
    image = noisy_image(64, 96, seed=3)
    whole = MultiScalePredictor(model, [0.5, 1.0], flip=True).labels(image)
    tiled = TiledPredictor(model, (32, 32), overlap=16, scales=[0.5, 1.0], flip=True)
    assert (tiled.labels(image) == whole).mean() >= 0.99
    # an image no larger than a tile is one tile: the whole-image computation (at scale 1; at other
    # scales the tiled path resizes the blended probabilities back, the whole-image path the logits)
    single = TiledPredictor(model, (64, 96), overlap=8, flip=True)
    np.testing.assert_allclose(single.probability_map(image),
                               MultiScalePredictor(model, [1.0], True).probabilities(image).numpy()[0], atol=1e-5)
    np.testing.assert_array_equal(single.labels(image, (32, 48)),
                                  MultiScalePredictor(model, [1.0], True).labels(image, (32, 48)))


def test_tiled_predictor_refuses_bad_tiles():
    model = build_tiny_model()
    with pytest.raises(ValueError, match="multiples of 8"):
        TiledPredictor(model, (30, 32))
    with pytest.raises(ValueError, match="overlap"):
        TiledPredictor(model, (32, 32), overlap=32)


# ----------------------------------------------------------------------------- config, evaluate(), CLI


def test_eval_config_tile_fields_are_validated():
    cfg = load_config(None, ["eval.tile_size=[256, 512]", "eval.tile_overlap=32"])
    assert cfg.eval.tile_size == [256, 512] and cfg.eval.tile_overlap == 32
    assert load_config(None, []).eval.tile_size is None  # default: the whole image
    for bad in (["eval.tile_size=[250, 512]"], ["eval.tile_size=[256]"], ["eval.tile_size=[64, 64]", "eval.tile_overlap=64"],
                ["eval.tile_overlap=-1"]):
        with pytest.raises(ConfigError, match="eval.tile"):
            load_config(None, bad)
    assert isinstance(make_predictor(build_tiny_model(), EvalConfig()), MultiScalePredictor)
    assert isinstance(make_predictor(build_tiny_model(), EvalConfig(tile_size=[32, 32], tile_overlap=8)), TiledPredictor)


def test_evaluate_with_tiles_scores_like_the_whole_image_on_a_pointwise_model():
    model = build_tiny_model()
    rng = np.random.default_rng(0)
    data = [(noisy_image(48, 80, seed=s), {"label": rng.integers(0, NUM_CLASSES, (1, 48, 80))}) for s in range(2)]
    base = evaluate(model, data, EvalConfig(), NUM_CLASSES, distance_mode="crop", progress=False)
    tiled = evaluate(model, data, EvalConfig(tile_size=[24, 32], tile_overlap=8), NUM_CLASSES, distance_mode="crop",
                     progress=False)
    assert tiled["confusion_matrix"] == base["confusion_matrix"]
    assert tiled["tile_size"] == [24, 32] and tiled["tile_overlap"] == 8 and base["tile_size"] is None


def test_evaluate_cli_tile_flags(tmp_path, capsys):
    from gscnn_tf.cli import evaluate as cli

    parser = cli.build_parser()
    text = parser.format_help()
    assert "--tile-size" in text and "--tile-overlap" in text
    args = parser.parse_args(["--checkpoint", "x", "--tile-size", "512x1024", "--tile-overlap", "96"])
    assert args.tile_size == (512, 1024) and args.tile_overlap == 96
    assert parser.parse_args(["--checkpoint", "x", "--tile-size", "256"]).tile_size == (256, 256)
    with pytest.raises(SystemExit):
        parser.parse_args(["--checkpoint", "x", "--tile-size", "big"])
    capsys.readouterr()
    assert cli.main(["--checkpoint", str(tmp_path), "--tile-size", "500x512", "--quiet"]) == 2
    assert "--tile-size must be multiples of 8" in capsys.readouterr().err
