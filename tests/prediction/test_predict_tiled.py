"""predict.py: tiled prediction of large images (--tile-size / --tile-overlap) and the header pixel limit (--max-pixels)."""
import os
import struct
import zlib

import cv2
import numpy as np
import pytest
import tensorflow as tf
from conftest import build_local_model, build_tiny_model, standin_config

from gscnn_tf.config import save_config
from gscnn_tf.export import saved_model as sm
from gscnn_tf.export.serving_graph import build_serving_module
from gscnn_tf.export.warmup import synthetic_image
from gscnn_tf.prediction import files
from gscnn_tf.utils.serving_limits import DEFAULT_MAX_PIXELS


def png_header_only(width, height):
    """A PNG signature, an IHDR chunk declaring ``width`` x ``height`` 8-bit RGB and an IEND: about
    60 bytes, no pixel data (decoding it would fail; a real one would need gigabytes)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)) + \
        chunk(b"IEND", b"")


def noisy_rgb(height, width, seed=0):
    rng = np.random.default_rng(seed)
    image = synthetic_image(height, width, seed).astype(np.int16) + rng.integers(-40, 40, (height, width, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


def memory_predictor(model, with_probabilities=True):
    module = build_serving_module(model, standin_config(), with_probabilities=with_probabilities)
    predictor = files.Predictor(module.serve_images, "memory", "checkpoint", standin_config().dataset,
                                with_probabilities)
    predictor._module = module
    return predictor


def read_png(path):
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert image is not None, path
    return image


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """The local-context model as a checkpoint (model.keras + config.yaml) and as SavedModels exported
    without and with probabilities, and a pointwise model's checkpoint."""
    root = tmp_path_factory.mktemp("tiled_models")
    out = {}
    for name, model in (("local", build_local_model()), ("pointwise", build_tiny_model())):
        run = root / name
        run.mkdir()
        model.save(str(run / "model.keras"))
        save_config(standin_config(), str(run / "config.yaml"))
        out[name] = str(run / "model.keras")
    for name, probabilities in (("export", False), ("export_probabilities", True)):
        out[name] = sm.export_saved_model(build_local_model(), standin_config(), str(root / name), warmup=False,
                                          verify=False, with_probabilities=probabilities)
    return out


# ----------------------------------------------------------------------------- predict_tiled


def test_tiles_of_a_pointwise_model_give_the_whole_image_prediction():
    model = build_tiny_model()
    predictor = memory_predictor(model)
    image = noisy_rgb(64, 128)
    whole = predictor(image)
    tiled = files.predict_tiled(predictor, image, (24, 40), overlap=8)
    np.testing.assert_array_equal(tiled["classes"], whole["classes"])
    assert tiled["classes"].dtype == whole["classes"].dtype and tiled["edge"].shape == (64, 128)
    np.testing.assert_allclose(tiled["edge"], whole["edge"], atol=1e-5)
    votes = memory_predictor(model, with_probabilities=False)
    assert not votes.has_probabilities
    np.testing.assert_array_equal(files.predict_tiled(votes, image, (24, 40), 8)["classes"], whole["classes"])


def test_tiled_prediction_agrees_with_the_whole_image():
    predictor = memory_predictor(build_local_model())
    image = noisy_rgb(64, 128, seed=1)
    whole = predictor(image)
    calls = []
    counting = files.Predictor(lambda x: calls.append(tuple(x.shape)) or predictor._fn(x), "memory", "checkpoint",
                               predictor.dataset, True)
    tiled = files.predict_tiled(counting, image, (32, 48), overlap=16)
    assert calls and set(calls) == {(1, 32, 48, 3)}  # the network only ever saw one tile
    assert len(np.unique(whole["classes"])) > 3
    assert (tiled["classes"] == whole["classes"]).mean() >= 0.99
    assert np.abs(tiled["edge"] - whole["edge"]).mean() < 0.01
    # an image that fits in a tile is predicted whole, with one call
    calls.clear()
    small = files.predict_tiled(counting, image, (64, 128), overlap=16)
    assert calls == [(1, 64, 128, 3)]
    np.testing.assert_array_equal(small["classes"], whole["classes"])


# ----------------------------------------------------------------------------- the pixel limit


def test_header_claiming_too_many_pixels_is_refused_without_decoding(tmp_path, monkeypatch):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_header_only(30000, 20000))
    assert bomb.stat().st_size < 100
    assert files.declared_pixels(str(bomb), bomb.read_bytes()) == (20000, 30000)
    decoded = []
    monkeypatch.setattr(tf.io, "decode_image", lambda *a, **k: decoded.append(a) or pytest.fail("decoded"))
    with pytest.raises(files.ImageReadError) as info:
        files.read_image(str(bomb), max_pixels=DEFAULT_MAX_PIXELS)
    message = str(info.value)
    assert str(bomb) in message and "20000x30000" in message and str(DEFAULT_MAX_PIXELS) in message
    assert "--tile-size" in message and "--max-pixels" in message and len(message.splitlines()) == 1
    assert decoded == []


def test_predict_cli_refuses_a_decompression_bomb_and_tiles_large_images(sources, tmp_path, capsys, caplog):
    from gscnn_tf.cli import predict as cli

    images = tmp_path / "in"
    images.mkdir()
    (images / "bomb.png").write_bytes(png_header_only(30000, 30000))
    big = noisy_rgb(64, 128, seed=2)
    cv2.imwrite(str(images / "big.png"), cv2.cvtColor(big, cv2.COLOR_RGB2BGR))
    bomb, large = str(images / "bomb.png"), str(images / "big.png")

    # without tiling: the bomb is skipped (a warning naming it with its size, the limit and the flag), exit 1
    out = tmp_path / "plain"
    expected = (f"{bomb}: 30000x30000 (HxW) pixels (declared in its header), more than the limit of "
                f"{DEFAULT_MAX_PIXELS} pixels; predict it in tiles with --tile-size HxW, or raise --max-pixels")
    caplog.clear()
    rc = cli.main(["--model", sources["local"], "--input", bomb, large, "--output", str(out), "--quiet"])
    assert rc == 1 and bomb in capsys.readouterr().err
    assert [r.getMessage() for r in caplog.records if "bomb.png" in r.getMessage()] == \
        [f"skipping {expected} (0 = no limit)"]
    assert sorted(os.listdir(out)) == ["big_edges.png", "big_overlay.png", "big_seg.png"]
    # --fail-fast stops at it, with the message as the error line
    rc = cli.main(["--model", sources["local"], "--input", bomb, large, "--output", str(tmp_path / "ff"), "--fail-fast",
                   "--quiet"])
    assert rc == 1 and expected in capsys.readouterr().err and not os.path.exists(tmp_path / "ff" / "big_seg.png")
    # a lower limit refuses the real image too; 0 = no limit lets the decoder see the bomb (and fail on it)
    rc = cli.main(["--model", sources["local"], "--input", large, "--output", str(tmp_path / "low"),
                   "--max-pixels", "4000", "--quiet"])
    assert rc == 1 and any("64x128 (HxW) pixels" in r.getMessage() for r in caplog.records)
    caplog.clear()
    rc = cli.main(["--model", sources["local"], "--input", bomb, "--output", str(tmp_path / "nolimit"),
                   "--max-pixels", "0", "--quiet"])
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert rc == 1 and "not a readable image" in messages and "limit" not in messages

    # with tiling: the image above the limit is predicted in tiles, from a checkpoint and from a SavedModel
    whole = read_png(out / "big_seg.png")
    for source in ("local", "export", "export_probabilities"):
        assert files.load_predictor(sources[source]).has_probabilities == (source == "export_probabilities")
        tiled = tmp_path / f"tiled_{source}"
        rc = cli.main(["--model", sources[source], "--input", large, "--output", str(tiled), "--max-pixels", "4000",
                       "--tile-size", "32x48", "--tile-overlap", "16", "--quiet"])
        assert rc == 0, capsys.readouterr().err
        votes = [r for r in caplog.records if "blended as class votes" in r.getMessage()]
        assert len(votes) == (source == "export")
        caplog.clear()
        seg = read_png(tiled / "big_seg.png")
        assert seg.shape == whole.shape
        assert (seg == whole).all(axis=-1).mean() >= 0.99
        edges = read_png(tiled / "big_edges.png").astype(int)
        assert np.abs(edges - read_png(out / "big_edges.png").astype(int)).mean() < 3


def test_tiling_follows_the_tile_not_the_pixel_limit(sources, tmp_path, capsys):
    from gscnn_tf.cli import predict as cli

    image = noisy_rgb(40, 56, seed=3)
    path = tmp_path / "x.png"
    cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    a, b = tmp_path / "a", tmp_path / "b"
    assert cli.main(["--model", sources["pointwise"], "--input", str(path), "--output", str(a), "--quiet"]) == 0
    assert cli.main(["--model", sources["pointwise"], "--input", str(path), "--output", str(b), "--quiet",
                     "--tile-size", "16x24", "--tile-overlap", "4"]) == 0
    np.testing.assert_array_equal(read_png(a / "x_seg.png"), read_png(b / "x_seg.png"))
    assert np.abs(read_png(a / "x_edges.png").astype(int) - read_png(b / "x_edges.png").astype(int)).max() <= 1


def test_predict_cli_tile_flags_help_and_usage_errors(sources, tmp_path, capsys):
    from gscnn_tf.cli import predict as cli

    text = cli.build_parser().format_help()
    for flag in ("--tile-size", "--tile-overlap", "--max-pixels"):
        assert flag in text
    assert f"default {DEFAULT_MAX_PIXELS}" in " ".join(text.split())
    path = tmp_path / "x.png"
    cv2.imwrite(str(path), noisy_rgb(8, 8))
    assert cli.main(["--model", sources["local"], "--input", str(path), "--tile-size", "32x32", "--tile-overlap",
                     "32"]) == 2
    assert "--tile-overlap 32" in capsys.readouterr().err
    assert cli.main(["--model", sources["local"], "--input", str(path), "--max-pixels", "-1"]) == 2
    with pytest.raises(SystemExit):
        cli.main(["--model", sources["local"], "--input", str(path), "--tile-size", "0x32"])
