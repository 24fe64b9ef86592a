"""SavedModel export: signatures, sizes, errors, warmup records, assets, versions, CLI.

The exported SavedModel is exercised in a *fresh* Python process in which gscnn_tf (and
these tests, which define the stand-in model's custom layer) cannot be imported: the
process runs with ``python -I -S`` (no site hooks, so no editable-install finder) and only
the virtualenv's site-packages on sys.path.
"""
import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import NUM_CLASSES, build_standin_model, build_tiny_model, standin_config

from gscnn_tf.config import load_config
from gscnn_tf.data import labels as label_tables
from gscnn_tf.export import saved_model as sm
from gscnn_tf.export import serving_graph, signatures, versions, warmup

MEAN = (127.5, 127.5, 127.5)  # normalization_for("mobilenetv2")


def reference(model, image):
    """Independent of the export code: numpy edge padding to a multiple of 8, model, crop."""
    h, w = image.shape[:2]
    hp, wp = -(-h // 8) * 8, -(-w // 8) * 8
    padded = np.pad(image.astype(np.float32), [(0, hp - h), (0, wp - w), (0, 0)], mode="edge")
    out = model(padded[None], training=False)
    logits = np.asarray(out["seg_logits"])[0, :h, :w]
    return logits, np.asarray(out["edge"])[0, :h, :w, 0]


def softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def make_images():
    """name -> (encoded bytes, RGB pixels as TensorFlow decodes them)."""
    rng = np.random.default_rng(0)
    specs = {
        "rgb_32x48": (32, 48, "png", 3),
        "odd_17x23": (17, 23, "png", 3),
        "portrait_rgba_41x19": (41, 19, "png", 4),
        "gray_24x24": (24, 24, "png", 1),
        "jpeg_30x30": (30, 30, "jpeg", 3),
        "tiny_1x1": (1, 1, "png", 3),
        "rgb2_32x48": (32, 48, "png", 3),
    }
    images = {}
    for name, (h, w, fmt, c) in specs.items():
        pixels = warmup.synthetic_image(h, w, seed=len(images))
        if c == 1:
            pixels = pixels[..., :1]
        elif c == 4:
            pixels = np.concatenate([pixels, rng.integers(0, 256, (h, w, 1), dtype=np.uint8)], -1)
        data = tf.io.encode_png(pixels).numpy() if fmt == "png" else tf.io.encode_jpeg(pixels, quality=90).numpy()
        images[name] = (data, tf.io.decode_image(data, channels=3, expand_animations=False).numpy())
    return images


CHILD = textwrap.dedent(r'''
    import importlib.util, json, sys
    sys.path.append(sys.argv[1])  # the venv's site-packages only; no .pth files, no repo
    assert importlib.util.find_spec("gscnn_tf") is None, "gscnn_tf must not be importable here"
    assert importlib.util.find_spec("test_export") is None
    import numpy as np
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    export, images_npz, out_path = sys.argv[2:5]
    loaded = tf.saved_model.load(export)
    serve = loaded.signatures["serving_default"]
    tensor_serve = loaded.signatures["serving_image_tensor"]
    data = dict(np.load(images_npz, allow_pickle=False))
    names = [k[len("bytes_"):] for k in data if k.startswith("bytes_")]
    out = {}
    def put(prefix, result):
        for key, value in result.items():
            out[prefix + "/" + key] = value.numpy()
    for name in names:
        put("single/" + name, serve(image_bytes=tf.constant([data["bytes_" + name].tobytes()])))
    mixed = ["odd_17x23", "portrait_rgba_41x19", "rgb_32x48"]
    put("mixed", serve(image_bytes=tf.constant([data["bytes_" + n].tobytes() for n in mixed])))
    put("same", serve(image_bytes=tf.constant([data["bytes_" + n].tobytes() for n in ("rgb_32x48", "rgb2_32x48")])))
    put("tensor", tensor_serve(images=tf.constant(data["pixels_rgb_32x48"][None])))
    put("forward", loaded.forward(tf.constant(data["pixels_rgb_32x48"][None].astype("float32"))))
    put("empty", serve(image_bytes=tf.constant([], tf.string)))
    errors = {}
    good = data["bytes_rgb_32x48"].tobytes()
    for label, batch in (("garbage", [good, b"this is not an image"]), ("truncated", [good[:40]]), ("empty", [b""])):
        try:
            serve(image_bytes=tf.constant(batch))
            errors[label] = None
        except tf.errors.InvalidArgumentError as exc:
            errors[label] = exc.message
        put("after_" + label, serve(image_bytes=tf.constant([good])))
    warm = []
    for raw in tf.data.TFRecordDataset(export + "/assets.extra/tf_serving_warmup_requests"):
        log = prediction_log_pb2.PredictionLog.FromString(raw.numpy())
        request = log.predict_log.request
        signature = loaded.signatures[request.model_spec.signature_name]
        expected = {k: v.dtype.as_datatype_enum for k, v in signature.structured_input_signature[1].items()}
        inputs = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
        result = signature(**{k: tf.constant(v) for k, v in inputs.items()})
        warm.append({"signature": request.model_spec.signature_name, "model": request.model_spec.name,
                     "keys": sorted(request.inputs), "dtypes": {k: v.dtype for k, v in request.inputs.items()},
                     "expected": expected, "batch": int(next(iter(inputs.values())).shape[0]),
                     "classes_shape": list(result["classes"].shape), "heights": result["height"].numpy().tolist()})
    meta = {"errors": errors, "warmup": warm, "labels_asset": loaded.labels_asset.asset_path.numpy().decode(),
            "signatures": sorted(loaded.signatures.keys()),
            "outputs": {k: [str(v.dtype.name), v.shape.as_list()]
                        for k, v in serve.structured_outputs.items()}}
    np.savez(out_path, **out)
    with open(out_path + ".json", "w") as f:
        json.dump(meta, f)
''')


@pytest.fixture(scope="module")
def standin():
    return build_standin_model()


@pytest.fixture(scope="module")
def exported(standin, tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    path = sm.export_saved_model(standin, standin_config(), str(root / "models"), with_probabilities=True,
                                 warmup_size=(24, 40), model_name="gscnn_test", source="in-memory stand-in")
    return path


@pytest.fixture(scope="module")
def images():
    return make_images()


@pytest.fixture(scope="module")
def fresh(exported, images, tmp_path_factory):
    """Runs the export in a fresh process without gscnn_tf; returns (arrays, metadata)."""
    work = tmp_path_factory.mktemp("fresh")
    images_npz = str(work / "images.npz")
    arrays = {}
    for name, (data, pixels) in images.items():
        arrays["bytes_" + name] = np.frombuffer(data, np.uint8)
        arrays["pixels_" + name] = pixels
    np.savez(images_npz, **arrays)
    (work / "child.py").write_text(CHILD)
    site_packages = os.path.dirname(os.path.dirname(tf.__file__))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = str(work / "out.npz")
    proc = subprocess.run([sys.executable, "-I", "-S", str(work / "child.py"), site_packages, exported, images_npz,
                           out], cwd=str(work), env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(out + ".json") as f:
        meta = json.load(f)
    return dict(np.load(out)), meta


def test_export_layout_and_assets(exported):
    assert os.path.basename(exported) == "1"
    for rel in ("saved_model.pb", "variables/variables.index", "assets/labels.json", "assets/config.yaml",
                "assets.extra/tf_serving_warmup_requests"):
        assert os.path.isfile(os.path.join(exported, rel)), rel
    with open(os.path.join(exported, "assets", "labels.json")) as f:
        meta = json.load(f)
    assert meta["class_names"] == list(label_tables.CLASS_NAMES)
    np.testing.assert_array_equal(np.array(meta["class_colors"]), label_tables.CLASS_COLORS)
    assert "0..255" in meta["input"]
    assert meta["config"]["model"]["backbone"] == "mobilenetv2"
    assert load_config(os.path.join(exported, "assets", "config.yaml")) == standin_config()
    # nothing but the version directory is left in the export dir (no temporary directories)
    assert os.listdir(os.path.dirname(exported)) == ["1"]


def test_fresh_process_matches_in_memory_model(fresh, standin, images):
    out, meta = fresh
    assert meta["signatures"] == ["serving_default", "serving_image_tensor"]
    assert meta["outputs"]["classes"][0] == "uint8" and meta["outputs"]["edge"][0] == "float32"
    assert meta["labels_asset"].endswith("labels.json")
    pixels = images["rgb_32x48"][1]
    logits, edge = reference(standin, pixels)
    # raw logits of the network inside the export vs the in-memory Keras model
    np.testing.assert_allclose(out["forward/seg_logits"][0], logits, atol=1e-4, rtol=1e-4)
    for prefix in ("single/rgb_32x48", "tensor"):
        np.testing.assert_array_equal(out[prefix + "/classes"][0], logits.argmax(-1))
        np.testing.assert_allclose(out[prefix + "/probabilities"][0], softmax(logits), atol=1e-5)
        np.testing.assert_allclose(out[prefix + "/edge"][0], edge, atol=1e-5)
    assert len(np.unique(logits.argmax(-1))) > 3  # the comparison is not between constant maps


def test_any_size_comes_back_at_its_own_size(fresh, standin, images):
    for name in ["odd_17x23", "portrait_rgba_41x19", "gray_24x24", "jpeg_30x30", "tiny_1x1"]:
        check_own_size(fresh[0], standin, images, name)


def check_own_size(out, standin, images, name):
    pixels = images[name][1]
    h, w = pixels.shape[:2]
    classes = out[f"single/{name}/classes"]
    assert classes.shape == (1, h, w) and classes.dtype == np.uint8
    assert out[f"single/{name}/edge"].shape == (1, h, w)
    assert out[f"single/{name}/probabilities"].shape == (1, h, w, NUM_CLASSES)
    assert out[f"single/{name}/height"].tolist() == [h] and out[f"single/{name}/width"].tolist() == [w]
    logits, edge = reference(standin, pixels)
    np.testing.assert_array_equal(classes[0], logits.argmax(-1))
    np.testing.assert_allclose(out[f"single/{name}/edge"][0], edge, atol=1e-5)


def test_mixed_size_batch_is_padded_and_independent_of_batch(fresh):
    out, _ = fresh
    names = ["odd_17x23", "portrait_rgba_41x19", "rgb_32x48"]
    assert out["mixed/classes"].shape == (3, 41, 48)
    assert out["mixed/height"].tolist() == [17, 41, 32] and out["mixed/width"].tolist() == [23, 19, 48]
    for i, name in enumerate(names):
        h, w = out["mixed/height"][i], out["mixed/width"][i]
        np.testing.assert_array_equal(out["mixed/classes"][i, :h, :w], out[f"single/{name}/classes"][0])
        np.testing.assert_allclose(out["mixed/edge"][i, :h, :w], out[f"single/{name}/edge"][0], atol=1e-6)
        assert (out["mixed/classes"][i, h:, :] == signatures.CLASSES_FILL).all()
        assert (out["mixed/classes"][i, :, w:] == signatures.CLASSES_FILL).all()
        assert (out["mixed/edge"][i, h:, :] == 0).all() and (out["mixed/probabilities"][i, :, w:] == 0).all()
    assert out["empty/classes"].shape == (0, 0, 0) and out["empty/height"].shape == (0,)
    # equal sizes run as one batch: same answers as one at a time
    for i, name in enumerate(["rgb_32x48", "rgb2_32x48"]):
        np.testing.assert_array_equal(out["same/classes"][i], out[f"single/{name}/classes"][0])
        np.testing.assert_allclose(out["same/edge"][i], out[f"single/{name}/edge"][0], atol=1e-5)


def test_bad_bytes_give_readable_error_and_model_keeps_working(fresh):
    out, meta = fresh
    errors = meta["errors"]
    assert "image_bytes[1] is not a PNG, JPEG, GIF, BMP or WebP image" in errors["garbage"]
    assert "image_bytes[0] is not a PNG" in errors["empty"]
    assert errors["truncated"] and "PNG" in errors["truncated"]  # the decoder's own message
    for label in ("garbage", "truncated", "empty"):
        np.testing.assert_array_equal(out[f"after_{label}/classes"], out["single/rgb_32x48/classes"])


def test_warmup_records_match_signatures_and_run(fresh, exported):
    _, meta = fresh
    records = warmup.read_warmup_requests(exported)
    assert len(records) == len(meta["warmup"]) == 5  # 3 single images, 1 batch, 1 uint8 tensor
    assert all(r.WhichOneof("log_type") == "predict_log" for r in records)
    string_dt, uint8_dt = tf.string.as_datatype_enum, tf.uint8.as_datatype_enum
    for record in meta["warmup"]:
        assert record["model"] == "gscnn_test"
        assert record["keys"] == sorted(record["expected"])  # input names of the signature
        assert record["dtypes"] == record["expected"]
    sigs = [(r["signature"], r["keys"], r["dtypes"][r["keys"][0]], r["batch"]) for r in meta["warmup"]]
    assert sigs[:4] == [("serving_default", ["image_bytes"], string_dt, 1)] * 3 + [
        ("serving_default", ["image_bytes"], string_dt, 3)]
    assert sigs[4] == ("serving_image_tensor", ["images"], uint8_dt, 1)
    assert meta["warmup"][0]["classes_shape"] == [1, 24, 40]
    assert meta["warmup"][3]["heights"] == [24, 24, 19]  # the odd-sized grayscale sample


def test_versions_overwrite_and_atomicity(tmp_path):
    standin = build_tiny_model()
    config = standin_config()
    root = str(tmp_path / "models")
    kw = dict(warmup=False, verify=False)
    first = sm.export_saved_model(standin, config, root, **kw)
    assert first.endswith(os.sep + "1")
    os.makedirs(os.path.join(root, "7"))  # versions are integers; the next one follows the highest
    os.makedirs(os.path.join(root, "notes"))
    assert versions.next_version(root) == 8
    with pytest.raises(FileExistsError, match="already exists"):
        sm.export_saved_model(standin, config, root, version=1, **kw)
    marker = os.path.join(first, "marker")
    open(marker, "w").close()
    sm.export_saved_model(standin, config, root, version=1, overwrite=True, **kw)
    assert not os.path.exists(marker) and os.path.isfile(os.path.join(first, "saved_model.pb"))
    # a failing export leaves nothing behind
    with pytest.raises(sm.ExportError):
        sm.export_saved_model(standin, config, root, version=0, **kw)
    with pytest.raises(ValueError):
        sm.export_saved_model(standin, config, root, version=9, warmup_size=(0, 4), **kw)
    assert sorted(os.listdir(root)) == ["1", "7", "notes"]
    assert versions.find_saved_model(root) == first  # "7" holds no saved_model.pb: not a usable version
    with pytest.raises(FileNotFoundError):
        versions.find_saved_model(root, version=7)


def test_pad_modes_agree_on_multiples_of_8_and_mean_mode_pads_with_mean(standin):
    config = standin_config()
    edge_mod = serving_graph.build_serving_module(standin, config)
    with pytest.raises(ValueError, match="pixel_mean"):
        serving_graph.build_serving_module(standin, config, pad_mode="mean")
    standin.pixel_mean = MEAN  # what a GatedSCNN with this backbone reports
    mean_mod = serving_graph.build_serving_module(standin, config, pad_mode="mean")
    img = warmup.synthetic_image(16, 24)[None]
    a, b = edge_mod.serve_images(img), mean_mod.serve_images(img)
    np.testing.assert_array_equal(a["classes"], b["classes"])
    padded = mean_mod._pad(tf.constant(warmup.synthetic_image(10, 13)[None])).numpy()
    assert padded.shape == (1, 16, 16, 3) and (padded[:, 10:] == 127.5).all() and (padded[:, :, 13:] == 127.5).all()
    padded = edge_mod._pad(tf.constant(warmup.synthetic_image(10, 13)[None])).numpy()
    np.testing.assert_array_equal(padded[:, 15], padded[:, 9])
    np.testing.assert_array_equal(padded[:, :, 15], padded[:, :, 12])


def test_max_pixels_rejects_large_images_readably():
    module = serving_graph.build_serving_module(build_tiny_model(), standin_config(), max_pixels=24 * 32)
    small, big = warmup.synthetic_image(24, 32), warmup.synthetic_image(25, 32)
    assert module.serve_bytes(tf.constant([warmup.encode(small)]))["classes"].shape == (1, 24, 32)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"image_bytes\[1\] is 25x32 pixels, more than"):
        module.serve_bytes(tf.constant([warmup.encode(small), warmup.encode(big)]))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"images is 25x32 pixels, more than .* 768 pixels"):
        module.serve_images(tf.constant(big[None]))
    assert module.serve_images(tf.constant(small[None]))["height"].numpy().tolist() == [24]
    assert module.metadata()["max_pixels"] == 768


def _encode(image, fmt):
    """RGB uint8 -> encoded bytes in PNG, JPEG, GIF or BMP (PIL, independent of the export)."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format=fmt)
    return buffer.getvalue()


def _with_jpeg_size(jpeg: bytes, height: int, width: int) -> bytes:
    """The same JPEG with the frame size in its SOF0 segment rewritten."""
    import struct

    sof = jpeg.index(b"\xff\xc0")
    return jpeg[: sof + 5] + struct.pack(">HH", height, width) + jpeg[sof + 9 :]


def test_max_pixels_reads_each_formats_header_before_decoding():
    import struct

    module = serving_graph.build_serving_module(build_tiny_model(), standin_config(), max_pixels=24 * 32)
    small, big = warmup.synthetic_image(24, 32), warmup.synthetic_image(25, 32)
    for fmt in ("PNG", "JPEG", "GIF", "BMP"):
        out = module.serve_bytes(tf.constant([_encode(small, fmt)]))
        assert out["classes"].shape == (1, 24, 32), fmt  # header sizes read right: no false refusal
        with pytest.raises(tf.errors.InvalidArgumentError, match=r"image_bytes\[0\] is 25x32 pixels, more than"):
            module.serve_bytes(tf.constant([_encode(big, fmt)]))

    # Headers declaring 20000x30000 pixels (2.4 GB once decoded) with no pixel data behind them:
    # refused by the size check, before any decoder sees them (a decoder would call them corrupt).
    bombs = {
        "PNG": b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + struct.pack(">IIBBBBB", 30000, 20000, 8, 2, 0, 0, 0),
        "JPEG": _with_jpeg_size(_encode(small, "JPEG"), 20000, 30000),  # 24x32 pixels of data behind it
        "GIF": b"GIF89a" + struct.pack("<HH", 30000, 20000) + b"\0" * 7,
        "BMP": b"BM" + b"\0" * 12 + struct.pack("<Iii", 40, 30000, -20000) + b"\0" * 28,
    }
    for data in bombs.values():
        with pytest.raises(tf.errors.InvalidArgumentError, match=r"image_bytes\[0\] is 20000x30000 pixels, more than"):
            module.serve_bytes(tf.constant([data]))
    assert module.serve_bytes(tf.constant([_encode(small, "PNG")]))["height"].numpy().tolist() == [24]

    # Without a limit nothing is read ahead: the same bytes reach the decoder, which rejects them.
    unlimited = serving_graph.build_serving_module(build_tiny_model(), standin_config())
    with pytest.raises(tf.errors.InvalidArgumentError) as error:
        unlimited.serve_bytes(tf.constant([bombs["PNG"]]))
    assert "pixels, more than" not in str(error.value)


def test_cli_export_from_keras_file(tmp_path, capsys):
    from gscnn_tf.cli import export as cli

    standin = build_tiny_model()
    model_file = str(tmp_path / "model.keras")
    standin.save(model_file)
    root = str(tmp_path / "models")
    args = ["--checkpoint", model_file, "--export-dir", root, "--no-verify", "--warmup-size", "16x24",
            "--max-pixels", "100000", "--log-level", "WARNING"]
    assert cli.main(args) == 0
    assert capsys.readouterr().out.strip() == os.path.join(root, "1")
    assert os.path.isfile(os.path.join(root, "1", "assets.extra", "tf_serving_warmup_requests"))
    with open(os.path.join(root, "1", "assets", "labels.json")) as f:
        assert json.load(f)["max_pixels"] == 100000
    assert cli.main(args + ["--version", "1"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert cli.main(["--checkpoint", str(tmp_path / "missing.keras"), "--export-dir", root]) == 2
    err = capsys.readouterr().err.strip()
    assert "missing.keras" in err and len(err.splitlines()) == 1
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    assert cli.main(["--checkpoint", model_file, "--export-dir", root, "--warmup-images", str(bad)]) == 2
    assert "bad.png: not a readable image" in capsys.readouterr().err
    assert sorted(os.listdir(root)) == ["1"]
    with pytest.raises(SystemExit):
        cli.main(["--checkpoint", model_file, "--export-dir", root, "--warmup-size", "big"])


@pytest.mark.slow
def test_real_gscnn_mobilenet_export(tmp_path):
    """The real network (MobileNetV2 x0.35, in-graph Canny): export, reload, same class maps, own sizes;
    the same weights as a run directory through the prediction CLI give the same colours."""
    from gscnn_tf.model import GatedSCNN

    config = standin_config()
    keras.utils.set_random_seed(1)
    model = GatedSCNN(config.model)
    assert model.pixel_mean == MEAN
    path = sm.export_saved_model(model, config, str(tmp_path / "models"), warmup_size=(48, 64))
    serve = tf.saved_model.load(path).signatures["serving_default"]
    image = warmup.synthetic_image(64, 64, seed=5)
    out = serve(image_bytes=tf.constant([warmup.encode(image)]))
    want = model(image[None], training=False)
    np.testing.assert_array_equal(out["classes"][0], np.argmax(want["seg_logits"][0], -1))
    np.testing.assert_allclose(out["edge"][0], want["edge"][0, ..., 0], atol=1e-4)
    odd = serve(image_bytes=tf.constant([warmup.encode(warmup.synthetic_image(37, 50, seed=6))]))
    assert odd["classes"].shape == (1, 37, 50) and odd["edge"].shape == (1, 37, 50)
    # the same weights as a training run directory, through the prediction CLI's checkpoint path
    from gscnn_tf.cli import predict as predict_cli
    from gscnn_tf.config import save_config
    from gscnn_tf.training.checkpoints import BEST_WEIGHTS

    run = tmp_path / "run"
    os.makedirs(run / os.path.dirname(BEST_WEIGHTS))
    model.save_weights(str(run / BEST_WEIGHTS))
    save_config(config, str(run / "config.yaml"))
    odd_file = tmp_path / "odd.png"
    odd_file.write_bytes(warmup.encode(warmup.synthetic_image(37, 50, seed=6)))
    assert predict_cli.main(["--model", str(run), "--input", str(odd_file), "--output", str(tmp_path / "p"),
                             "--quiet"]) == 0
    import cv2

    seg = cv2.cvtColor(cv2.imread(str(tmp_path / "p" / "odd_seg.png")), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(seg, label_tables.CLASS_COLORS[odd["classes"].numpy()[0]])
