"""Prediction CLI, visual outputs and the REST serving client (against a stub server)."""
import base64
import http.server
import json
import os
import subprocess
import sys
import threading

import cv2
import numpy as np
import pytest
import tensorflow as tf
from conftest import build_standin_model, standin_config  # noqa: E402

from gscnn_tf.config import save_config
from gscnn_tf.data import labels as label_tables
from gscnn_tf.export import saved_model as sm
from gscnn_tf.export import warmup
from gscnn_tf.prediction import visualize

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CLIENT = os.path.join(REPO, "scripts", "serving_client.py")


def read_rgb(path):
    image = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    assert image is not None, path
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB) if image.ndim == 3 else image


# ----------------------------------------------------------------------------- visualize


def test_color_mask_overlay_edges_label_ids():
    classes = np.array([[0, 1, 18], [255, 13, 19]], np.uint8)
    mask = visualize.color_mask(classes)
    np.testing.assert_array_equal(mask[0], label_tables.CLASS_COLORS[[0, 1, 18]])
    np.testing.assert_array_equal(mask[1, 1], label_tables.CLASS_COLORS[13])
    assert (mask[1, 0] == 0).all() and (mask[1, 2] == 0).all()  # ignore / unknown ids are black
    photo = np.full((2, 3, 3), 200, np.uint8)
    blend = visualize.overlay(photo, classes, alpha=0.25)
    expected = np.round(0.75 * 200 + 0.25 * label_tables.CLASS_COLORS[0].astype(float))
    np.testing.assert_array_equal(blend[0, 0], expected)
    np.testing.assert_array_equal(blend[1, 0], photo[1, 0])  # ignore keeps the photo
    np.testing.assert_array_equal(visualize.overlay(photo, classes, 1.0)[0], mask[0])
    with pytest.raises(ValueError):
        visualize.overlay(photo, classes, 1.5)
    np.testing.assert_array_equal(visualize.edge_image(np.array([[0.0, 0.5, 1.0, 2.0]])), [[0, 128, 255, 255]])
    ids = visualize.label_ids_image(classes)
    assert ids[0].tolist() == [7, 8, 33] and ids[1, 0] == 0  # road, sidewalk, bicycle; ignore -> unlabeled


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    """A SavedModel export and a run-like folder (model.keras + config.yaml) of the same model."""
    root = tmp_path_factory.mktemp("predict_models")
    model = build_standin_model()
    config = standin_config()
    export = sm.export_saved_model(model, config, str(root / "export"), warmup=False, verify=False)
    run = root / "run"
    run.mkdir()
    model.save(str(run / "model.keras"))
    save_config(config, str(run / "config.yaml"))
    return {"export_root": str(root / "export"), "export": export, "keras": str(run / "model.keras")}


@pytest.fixture(scope="module")
def loaded(model_files):
    return tf.saved_model.load(model_files["export"])


@pytest.fixture()
def image_dir(tmp_path):
    d = tmp_path / "images"
    (d / "sub").mkdir(parents=True)
    a = warmup.synthetic_image(17, 23, seed=3)
    b = warmup.synthetic_image(40, 24, seed=4)
    cv2.imwrite(str(d / "a.png"), cv2.cvtColor(a, cv2.COLOR_RGB2BGR))
    (d / "b.jpg").write_bytes(warmup.encode(b, "jpeg"))
    cv2.imwrite(str(d / "sub" / "c.png"), cv2.cvtColor(a, cv2.COLOR_RGB2BGR))
    (d / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n but then nothing useful")
    (d / "notes.txt").write_text("not an image, ignored in folders")
    return d


def signature_outputs(loaded, path):
    data = open(path, "rb").read()
    out = loaded.signatures["serving_default"](image_bytes=tf.constant([data]))
    return out["classes"].numpy()[0], out["edge"].numpy()[0]


# ----------------------------------------------------------------------------- predict CLI


def test_predict_cli_on_folder_with_saved_model(model_files, loaded, image_dir, tmp_path, capsys):
    from gscnn_tf.cli import predict as cli

    out = tmp_path / "out"
    rc = cli.main(["--model", model_files["export_root"], "--input", str(image_dir), "--output", str(out),
                   "--label-ids", "--overlay-alpha", "0.4", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 1  # broken.png was skipped and reported by name
    assert "broken.png" in err and "a.png" not in err
    assert sorted(os.listdir(out)) == sorted(f"{n}{s}" for n in ("a", "b") for s in
                                             ("_seg.png", "_overlay.png", "_edges.png", "_labelIds.png"))
    for name, (h, w) in (("a", (17, 23)), ("b", (40, 24))):
        src = str(image_dir / ("a.png" if name == "a" else "b.jpg"))
        classes, edge = signature_outputs(loaded, src)
        assert len(np.unique(classes)) > 1
        seg = read_rgb(str(out / f"{name}_seg.png"))
        assert seg.shape == (h, w, 3)
        np.testing.assert_array_equal(seg, label_tables.CLASS_COLORS[classes])
        photo = tf.io.decode_image(open(src, "rb").read(), channels=3).numpy()
        np.testing.assert_array_equal(read_rgb(str(out / f"{name}_overlay.png")),
                                      visualize.overlay(photo, classes, 0.4))
        edges = read_rgb(str(out / f"{name}_edges.png"))
        assert edges.shape == (h, w) and np.abs(edges.astype(int) - np.round(edge * 255)).max() <= 1
        ids = read_rgb(str(out / f"{name}_labelIds.png"))
        np.testing.assert_array_equal(ids, label_tables.train_id_to_label_id_lut()[classes])


def test_predict_cli_checkpoint_matches_saved_model_and_recurses(model_files, image_dir, tmp_path):
    from gscnn_tf.cli import predict as cli

    a, b = tmp_path / "a", tmp_path / "b"
    inputs = [str(image_dir / "a.png"), str(image_dir / "sub")]
    assert cli.main(["--model", model_files["keras"], "--input", *inputs, "--output", str(a), "--quiet"]) == 0
    assert cli.main(["--model", model_files["export"], "--input", *inputs, "--output", str(b), "--quiet"]) == 0
    # a.png and sub/c.png hold the same pixels; both sources give the same class map
    for name in ("a_seg.png", "c_seg.png", "a_edges.png"):
        np.testing.assert_array_equal(read_rgb(str(a / name)), read_rgb(str(b / name)))
    np.testing.assert_array_equal(read_rgb(str(a / "a_seg.png")), read_rgb(str(a / "c_seg.png")))
    c = tmp_path / "c"
    assert cli.main(["--model", model_files["export"], "--input", str(image_dir), "--recursive",
                     "--output", str(c), "--quiet"]) == 1
    assert os.path.isfile(c / "sub" / "c_seg.png")


def test_predict_cli_user_errors(model_files, image_dir, tmp_path, capsys):
    from gscnn_tf.cli import predict as cli

    assert cli.main(["--model", str(tmp_path / "nope"), "--input", str(image_dir / "a.png"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "nope" in err and len(err.splitlines()) == 1
    assert cli.main(["--model", model_files["export"], "--input", str(tmp_path / "missing.png"), "--quiet"]) == 2
    assert "missing.png" in capsys.readouterr().err
    rc = cli.main(["--model", model_files["export"], "--input", str(image_dir / "broken.png"),
                   str(image_dir / "a.png"), "--fail-fast", "--quiet", "--output", str(tmp_path / "o")])
    assert rc == 1 and "broken.png" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "o" / "a_seg.png")  # stopped at the first bad file
    with pytest.raises(SystemExit):
        cli.main(["--model", model_files["export"], "--input", str(image_dir), "--overlay-alpha", "2"])


# ----------------------------------------------------------------------------- serving client


class _StubServing(http.server.ThreadingHTTPServer):
    """Answers TF Serving REST predict requests with the SavedModel's own outputs."""

    daemon_threads = True


def _handler(loaded, seen):
    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def _reply(self, code, body):
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self):  # noqa: N802
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append((self.path, body))
            if self.path != "/v1/models/gscnn:predict":
                return self._reply(404, {"error": f"Servable not found for request: {self.path}"})
            signature = loaded.signatures[body["signature_name"]]
            images = [base64.b64decode(inst["b64"]) for inst in body["instances"]]
            try:
                out = signature(image_bytes=tf.constant(images))
            except tf.errors.InvalidArgumentError as exc:
                return self._reply(400, {"error": exc.message})
            keys = sorted(out)
            rows = [{k: out[k].numpy()[i].tolist() for k in keys} for i in range(len(images))]
            return self._reply(200, {"predictions": rows})

    return Handler


@pytest.fixture()
def stub_server(loaded):
    seen = []
    server = _StubServing(("127.0.0.1", 0), _handler(loaded, seen))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    stopper = threading.Timer(120, server.shutdown)  # bounded even if a test hangs
    stopper.daemon = True
    stopper.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        stopper.cancel()
        server.shutdown()
        server.server_close()
        thread.join(10)


def run_client(*args):
    """Runs the client in a fresh interpreter and checks it did not import TensorFlow."""
    code = ("import runpy, sys\n"
            f"sys.argv = [{CLIENT!r}] + {list(args)!r}\n"
            "try:\n"
            f"    runpy.run_path({CLIENT!r}, run_name='__main__')\n"
            "    rc = 0\n"
            "except SystemExit as e:\n"
            "    rc = e.code or 0\n"
            "assert 'tensorflow' not in sys.modules and 'gscnn_tf' not in sys.modules\n"
            "sys.exit(rc)\n")
    return subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True, timeout=120)


def test_serving_client_against_stub_server(stub_server, loaded, image_dir, tmp_path):
    url, seen = stub_server
    src = str(image_dir / "b.jpg")
    mask, edges = str(tmp_path / "mask.png"), str(tmp_path / "edges.png")
    proc = run_client("--server", url, "--model", "gscnn", "--image", src, "--output", mask, "--edges", edges)
    assert proc.returncode == 0, proc.stderr
    path, body = seen[-1]
    assert path == "/v1/models/gscnn:predict" and body["signature_name"] == "serving_default"
    assert base64.b64decode(body["instances"][0]["b64"]) == open(src, "rb").read()
    classes, edge = signature_outputs(loaded, src)
    colour = read_rgb(mask)
    assert colour.shape == (40, 24, 3)
    np.testing.assert_array_equal(colour, label_tables.CLASS_COLORS[classes])
    assert np.abs(read_rgb(edges).astype(int) - np.round(edge * 255)).max() <= 1


def test_serving_client_reports_server_errors(stub_server, image_dir, tmp_path):
    url, _ = stub_server
    bad = run_client("--server", url, "--image", str(image_dir / "broken.png"), "--output", str(tmp_path / "x.png"))
    assert bad.returncode == 1 and "HTTP 400" in bad.stderr and "PNG" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1 and not os.path.exists(tmp_path / "x.png")
    wrong = run_client("--server", url, "--model", "other", "--image", str(image_dir / "a.png"),
                       "--output", str(tmp_path / "y.png"))
    assert wrong.returncode == 1 and "HTTP 404" in wrong.stderr
    missing = run_client("--server", url, "--image", str(tmp_path / "none.png"), "--output", str(tmp_path / "z.png"))
    assert missing.returncode == 2 and "none.png" in missing.stderr


def test_serving_client_palette_is_cityscapes():
    import runpy

    client = runpy.run_path(CLIENT)
    np.testing.assert_array_equal(np.array(client["CITYSCAPES_COLORS"], np.uint8), label_tables.CLASS_COLORS)
    assert client["predict_url"]("localhost:8501", "gscnn", 3) == "http://localhost:8501/v1/models/gscnn/versions/3:predict"
