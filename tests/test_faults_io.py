"""Faults around conversion, export, serving and prediction (issue 13, I/O half).

Each test reproduces one reported failure (a failed re-conversion deleting the good
dataset, orphan workers, interleaved converters, disk full, unbounded serving memory,
unclear serving errors, non-finite exports, leftover export temp dirs, private
permissions, predict overwriting or hanging, TensorFlow start-up noise) and checks the
fixed behaviour against what the files on disk say.
"""
import glob
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

from gscnn_tf.data import convert, shards
from gscnn_tf.data.cityscapes import discover_cityscapes
from gscnn_tf.data.synthetic import generate_synthetic_cityscapes
from gscnn_tf.data.verify import verify
from tfrecords_tools import convert_cityscapes as convert_cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
H, W = 64, 128


def _digest(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _snapshot(out):
    """{file name: sha256} of every shard and manifest in ``out`` (the published dataset)."""
    files = glob.glob(os.path.join(out, "*.tfrecord")) + glob.glob(os.path.join(out, "*_manifest.json"))
    return {os.path.basename(p): _digest(p) for p in files}


def _run_convert(argv, capsys):
    rc = convert_cli.main(argv + ["--quiet"])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return rc, err


@pytest.fixture(scope="module")
def cs_src(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("cs"))
    generate_synthetic_cityscapes(root, num_train=6, num_val=2, num_test=0, height=H, width=W, seed=3)
    return root


@pytest.fixture
def cs_root(cs_src, tmp_path):
    dst = str(tmp_path / "root")
    shutil.copytree(cs_src, dst)
    return dst


def _corrupt_middle(path):
    """Flips a byte in the middle: the PNG header still passes the pre-pass, decoding fails in the writer."""
    good = open(path, "rb").read()
    data = bytearray(good)
    data[len(data) // 2] ^= 0xFF
    open(path, "wb").write(bytes(data))
    return good


# --------------------------------------------------------------------------- conversion
def test_failed_reconversion_keeps_the_published_split(cs_root, tmp_path, capsys):
    out = str(tmp_path / "out")
    rc, err = _run_convert(["cityscapes", "--root", cs_root, "--out", out, "--splits", "val", "train",
                            "--num-shards", "2"], capsys)
    assert rc == 0, err
    before = _snapshot(out)
    # The last image of the sorted val split lands in the last shard: earlier shards get written first.
    victim = discover_cityscapes(cs_root, "val")[-1].image.path
    good = _corrupt_middle(victim)
    rc, err = _run_convert(["cityscapes", "--root", cs_root, "--out", out, "--splits", "val",
                            "--num-shards", "1", "--force"], capsys)
    assert rc == 1 and victim in err
    rc, err = _run_convert(["cityscapes", "--root", cs_root, "--out", out, "--splits", "train",
                            "--num-shards", "3"], capsys)
    assert rc == 0, err  # another split's re-conversion is independent
    after = _snapshot(out)
    assert {k: v for k, v in after.items() if k.startswith("val")} == \
        {k: v for k, v in before.items() if k.startswith("val")}  # old val shards + manifest untouched
    assert sorted(k for k in after if k.startswith("train_fine")) == \
        [f"train_fine-{i:05d}-of-00003.tfrecord" for i in range(3)]
    assert verify(out)["val"] == {"num_examples": 2, "num_shards": 2}
    # The train split (6 images): re-convert into 4 shards with one bad image -> old 3 shards kept.
    tvictim = sorted(s.image.path for s in discover_cityscapes(cs_root, "train"))[0]
    tgood = _corrupt_middle(tvictim)
    train_before = {k: v for k, v in _snapshot(out).items() if k.startswith("train")}
    rc, err = _run_convert(["cityscapes", "--root", cs_root, "--out", out, "--splits", "train",
                            "--num-shards", "4"], capsys)
    assert rc == 1 and tvictim in err and len(err.strip().splitlines()) == 1
    assert {k: v for k, v in _snapshot(out).items() if k.startswith("train")} == train_before
    verify(out)
    # Fixed input: the rerun completes the new split and swaps it in, no staging left.
    open(victim, "wb").write(good)
    open(tvictim, "wb").write(tgood)
    rc, err = _run_convert(["cityscapes", "--root", cs_root, "--out", out, "--splits", "train", "val",
                            "--num-shards", "4"], capsys)
    assert rc == 0, err
    report = verify(out)
    assert report["train"] == {"num_examples": 6, "num_shards": 4} and report["val"]["num_shards"] == 2
    assert not glob.glob(os.path.join(out, ".*staging*"))


def test_interrupted_swap_is_finished_by_the_next_run(cs_root, tmp_path, monkeypatch):
    out = str(tmp_path / "out")
    convert.convert_cityscapes(cs_root, out, splits=("train",), num_shards=2)
    real = shards.move_shard
    calls = []

    def move_then_die(*a):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # killed in the middle of the swap
        return real(*a)

    monkeypatch.setattr(shards, "move_shard", move_then_die)
    with pytest.raises(KeyboardInterrupt):
        convert.convert_cityscapes(cs_root, out, splits=("train",), num_shards=3)
    monkeypatch.setattr(shards, "move_shard", real)
    assert not os.path.exists(os.path.join(out, "train_manifest.json"))  # half-swapped: no manifest claims it
    encoded = []
    monkeypatch.setattr(shards, "encode_sample", lambda *a, **k: encoded.append(1))
    manifest = convert.convert_cityscapes(cs_root, out, splits=("train",), num_shards=3)["train"]
    assert encoded == []  # everything came from the staged shards
    assert manifest["num_shards"] == 3 and verify(out)["train"]["num_shards"] == 3


def _children(pid):
    kids = []
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            fields = open(stat).read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.split("/")[2]))
    return kids


def _alive(pid):
    try:
        state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")  # a zombie is dead (nobody may reap it in a container)


@pytest.mark.parametrize("sig", [signal.SIGKILL, pytest.param(signal.SIGTERM, marks=pytest.mark.slow)])
def test_killed_parallel_conversion_leaves_no_orphan_workers(cs_src, tmp_path, sig):
    out = str(tmp_path / "out")
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    proc = subprocess.Popen([sys.executable, "-m", "tfrecords_tools.convert_cityscapes", "cityscapes", "--root",
                             cs_src, "--out", out, "--splits", "train", "--num-shards", "3", "--workers", "2",
                             "--quiet"], cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers = []
    deadline = time.time() + 60
    while time.time() < deadline and len(workers) < 2:
        workers = _children(proc.pid)
        time.sleep(0.05)
    assert len(workers) >= 2, "the converter did not start its workers"
    time.sleep(0.5)
    proc.send_signal(sig)
    proc.wait(timeout=30)
    # A worker whose parent was killed may still be starting (importing TensorFlow: seconds, more on a
    # loaded machine); it exits as soon as its initialiser sees the parent gone.
    deadline = time.time() + 90
    while time.time() < deadline and any(_alive(p) for p in workers):
        time.sleep(0.1)
    orphans = [p for p in workers if _alive(p)]
    for p in orphans:  # do not leave them running if the test fails
        os.kill(p, signal.SIGKILL)
    assert orphans == []
    if sig == signal.SIGTERM:  # a stop, not a kill: the converter cleans up after itself
        assert proc.returncode == 128 + signal.SIGTERM
        assert [n for n in os.listdir(out) if ".tmp" in n] == []
    # The next run starts cleanly (the dead run's lock is gone) and completes.
    res = subprocess.run([sys.executable, "-m", "tfrecords_tools.convert_cityscapes", "cityscapes", "--root", cs_src,
                          "--out", out, "--splits", "train", "--num-shards", "3", "--quiet"], cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert verify(out)["train"]["num_shards"] == 3


SLOW_CONVERT = """
import glob, os, sys, time
from gscnn_tf.data import shards
encode = shards.encode_sample
out = sys.argv[sys.argv.index("--out") + 1]
def slow(*args):  # once a first shard is complete (the test's cue to stop), 10 s per image: the stop
    # lands while shards are being written even when the test process is slow to send it
    time.sleep(10 if glob.glob(os.path.join(out, ".*.tfrecord.json")) else 0.5)
    return encode(*args)
shards.encode_sample = slow
from tfrecords_tools.convert_cityscapes import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, pytest.param(signal.SIGINT, marks=pytest.mark.slow)])
def test_stopped_conversion_says_so_in_one_line_and_leaves_no_partial_file(cs_src, tmp_path, sig):
    out = str(tmp_path / "out")
    argv = ["cityscapes", "--root", cs_src, "--out", out, "--splits", "train", "--num-shards", "3", "--quiet"]
    # A job started in the background by a non-interactive shell (CI's `bash .ci/run &`) inherits
    # SIGINT ignored, and Python then keeps it ignored; the child gets the default a terminal gives.
    proc = subprocess.Popen([sys.executable, "-c", SLOW_CONVERT] + argv, cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    while time.time() < deadline and not glob.glob(os.path.join(out, ".*.tfrecord.json")):  # a first sidecar
        time.sleep(0.05)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + sig, err
    assert err.strip().splitlines() == [
        f"gscnn-convert: stopped by {signal.Signals(sig).name}: complete shards were kept and no partial file "
        "is left; rerun the same command to resume"]
    left = sorted(os.listdir(out))
    assert [n for n in left if ".tmp" in n] == [] and "train_manifest.json" not in left
    kept = sorted(glob.glob(os.path.join(out, "*.tfrecord")))
    assert 1 <= len(kept) < 3  # stopped part way
    for shard in kept:  # every shard training could read is complete
        assert json.load(open(shards.sidecar_path(shard)))["sha256"] == _digest(shard)
    res = subprocess.run([sys.executable, "-m", "tfrecords_tools.convert_cityscapes"] + argv[:-1], cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert res.stderr.count("is complete, skipping") == len(kept)  # the rerun resumed
    assert verify(out)["train"]["num_shards"] == 3


def test_second_converter_on_the_same_out_is_refused(cs_root, tmp_path, capsys):
    out = str(tmp_path / "out")
    os.makedirs(out)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from gscnn_tf.data.shards import output_lock\n"
         f"with output_lock({out!r}):\n    print('held', flush=True); sys.stdin.read()"],
        cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        rc, err = _run_convert(["cityscapes", "--root", cs_root, "--out", out, "--splits", "val"], capsys)
        assert rc == 1 and "another conversion" in err and f"pid {holder.pid}" in err
        assert glob.glob(os.path.join(out, "*.tfrecord")) == []  # refused before writing
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    rc, err = _run_convert(["cityscapes", "--root", cs_root, "--out", out, "--splits", "val"], capsys)
    assert rc == 0, err  # released with its holder


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 96 KiB filesystem (a full disk after a few shards); skipped where mounting is not allowed."""
    mnt = tmp_path / "full"
    mnt.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96k", "tmpfs", str(mnt)], capture_output=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({res.stderr.decode().strip()})")
    try:
        yield str(mnt)
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_disk_full_during_conversion_is_one_line_and_leaves_no_partial_shard(cs_root, small_tmpfs, capsys):
    out = os.path.join(small_tmpfs, "out")
    rc, err = _run_convert(["cityscapes", "--root", cs_root, "--out", out, "--splits", "train",
                            "--num-shards", "6"], capsys)
    lines = err.strip().splitlines()
    assert rc == 1 and len(lines) == 1, err
    assert "No space left on device" in lines[0] and out in lines[0]
    assert not [p for p in os.listdir(out) if ".tmp" in p]
    for shard in glob.glob(os.path.join(out, "*.tfrecord")):  # whatever is left is complete
        side = json.load(open(shards.sidecar_path(shard)))
        assert side["sha256"] == _digest(shard)


# --------------------------------------------------------------------------- serving graph
import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from conftest import build_tiny_model, standin_config  # noqa: E402

from gscnn_tf.export import saved_model as sm  # noqa: E402
from gscnn_tf.export import (  # noqa: E402
    serving_graph,
    versions,
    warmup,  # noqa: E402
)
from gscnn_tf.utils.serving_limits import DEFAULT_MAX_PIXELS, DEFAULT_MAX_REQUEST_PIXELS  # noqa: E402


class _BatchRecorder(keras.layers.Layer):
    """Identity that records the largest batch the network was called with (a tf.Variable)."""

    def build(self, shape):
        self.largest = self.add_weight(shape=(), dtype="int32", initializer="zeros", trainable=False)

    def call(self, x):
        self.largest.assign(tf.maximum(self.largest, tf.shape(x)[0]))
        return x


def _recording_model():
    image = keras.Input((None, None, 3), name="image")
    recorder = _BatchRecorder()
    x = recorder(image)
    model = keras.Model(image, {"seg_logits": keras.layers.Conv2D(19, 1)(x),
                                "edge": keras.layers.Conv2D(1, 1, activation="sigmoid")(x)})
    return model, recorder


def _png(h, w, seed=0):
    return warmup.encode(warmup.synthetic_image(h, w, seed=seed))


def test_batches_run_in_bounded_chunks_with_the_same_results():
    model, recorder = _recording_model()
    config = standin_config()
    chunked = serving_graph.build_serving_module(model, config, chunk_pixels=24 * 32)  # one 24x32 image per network call
    whole = serving_graph.build_serving_module(model, config, chunk_pixels=0)
    batch = tf.constant([_png(24, 30, seed=i) for i in range(3)])  # padded to 24x32
    recorder.largest.assign(0)
    got = chunked.serve_bytes(batch)
    assert int(recorder.largest.numpy()) == 1  # never more than one image at once
    recorder.largest.assign(0)
    want = whole.serve_bytes(batch)
    assert int(recorder.largest.numpy()) == 3
    for key in ("classes", "edge", "height", "width"):
        np.testing.assert_allclose(got[key].numpy(), want[key].numpy(), atol=1e-6)
    pixels = tf.constant(np.stack([warmup.synthetic_image(16, 16, seed=i) for i in range(5)]))
    two = serving_graph.build_serving_module(model, config, chunk_pixels=2 * 16 * 16)
    recorder.largest.assign(0)
    got = two.serve_images(pixels)
    assert int(recorder.largest.numpy()) == 2 and got["classes"].shape == (5, 16, 16)
    np.testing.assert_array_equal(got["classes"].numpy(), whole.serve_images(pixels)["classes"].numpy())


def test_request_pixel_limit_names_the_element_and_defaults_are_safe():
    module = serving_graph.build_serving_module(build_tiny_model(), standin_config(), max_request_pixels=3 * 24 * 32)
    small = _png(24, 32)
    assert module.serve_bytes(tf.constant([small] * 3))["classes"].shape == (3, 24, 32)
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"image_bytes\[3\] brings this request to 3072 pixels, more than .* 2304 pixels per"):
        module.serve_bytes(tf.constant([small] * 4))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"images brings this request to 3072 pixels"):
        module.serve_images(tf.constant(np.stack([warmup.synthetic_image(24, 32)] * 4)))
    assert module.serve_bytes(tf.constant([small]))["height"].numpy().tolist() == [24]  # next request fine
    # The export has limits unless told otherwise; the CLI's --help defaults are the module's.
    from gscnn_tf.cli import export as export_cli

    args = export_cli.build_parser().parse_args(["--checkpoint", "x", "--export-dir", "y"])
    assert args.max_pixels == DEFAULT_MAX_PIXELS > 0 and args.max_request_pixels == DEFAULT_MAX_REQUEST_PIXELS > 0


def test_truncated_jpeg_in_a_batch_names_its_element_and_empty_tensor_batch_is_refused():
    module = serving_graph.build_serving_module(build_tiny_model(), standin_config())
    jpeg = warmup.encode(warmup.synthetic_image(40, 48), "jpeg")
    good = _png(24, 32)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"image_bytes\[2\] is a truncated JPEG"):
        module.serve_bytes(tf.constant([good, jpeg, jpeg[: len(jpeg) * 2 // 3]]))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"image_bytes\[1\] is a truncated PNG"):
        module.serve_bytes(tf.constant([good, good[:-20]]))
    # Complete files with trailing bytes after the end marker are still served (no false refusal).
    out = module.serve_bytes(tf.constant([jpeg + b"\0" * 300, good + b"trailer"]))
    assert out["height"].numpy().tolist() == [40, 24]
    for empty in (np.zeros((0, 16, 16, 3), np.uint8), np.zeros((1, 0, 16, 3), np.uint8)):
        with pytest.raises(tf.errors.InvalidArgumentError, match=r"images has shape .* send at least one image"):
            module.serve_images(tf.constant(empty))
    assert module.serve_images(tf.constant(warmup.synthetic_image(8, 8)[None]))["classes"].shape == (1, 8, 8)


# --------------------------------------------------------------------------- export files
def test_export_refuses_non_finite_weights_naming_the_checkpoint(tmp_path, capsys):
    from gscnn_tf.cli import export as export_cli

    model = build_tiny_model()
    kernel = model.weights[0]
    values = kernel.numpy()
    values.flat[0] = np.nan
    kernel.assign(values)
    path = str(tmp_path / "diverged.keras")
    model.save(path)
    root = str(tmp_path / "models")
    rc = export_cli.main(["--checkpoint", path, "--export-dir", root, "--no-verify", "--no-warmup",
                          "--log-level", "WARNING"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "diverged.keras" in err and "NaN or Inf" in err
    assert versions.existing_versions(root) == [] and not [n for n in os.listdir(root) if n.startswith(".")] \
        if os.path.isdir(root) else True


def test_next_export_removes_temp_dirs_of_killed_exports_only(tmp_path):
    import tempfile

    root = str(tmp_path / "models")
    os.makedirs(root)
    # What a SIGKILLed export leaves (atomic_directory's and the assets' temporary names) ...
    killed = [tempfile.mkdtemp(prefix=".1.", suffix=".tmp", dir=root),
              tempfile.mkdtemp(prefix=".3.", suffix=".tmp", dir=root) + ".old",
              tempfile.mkdtemp(prefix=".gscnn_export_assets.", suffix=".tmp", dir=root)]
    os.makedirs(killed[1])
    for d in killed:
        open(os.path.join(d, "saved_model.pb"), "wb").write(b"\0" * 1000)
    # ... and user files that merely look alike: kept.
    user = [os.path.join(root, ".notes"), os.path.join(root, "2.tmp"), os.path.join(root, ".1.backup")]
    for d in user:
        os.makedirs(d)
    tmp_file = os.path.join(root, ".1.abcdefgh.tmp")
    open(tmp_file, "w").close()
    sm.export_saved_model(build_tiny_model(), standin_config(), root, warmup=False, verify=False)
    assert [d for d in killed if os.path.exists(d)] == []
    assert all(os.path.exists(p) for p in user + [tmp_file])
    assert versions.existing_versions(root) == [1]


def _modes(root):
    out = {}
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(directory, name)
            out[os.path.relpath(path, root)] = os.stat(path).st_mode & 0o777
    return out


def test_published_exports_and_predictions_follow_the_umask(tmp_path):
    from gscnn_tf.cli import predict as predict_cli

    old = os.umask(0o022)
    try:
        root = str(tmp_path / "models")
        version = sm.export_saved_model(build_tiny_model(), standin_config(), root, warmup_size=(16, 16))
        assert os.stat(version).st_mode & 0o777 == 0o755
        modes = _modes(version)
        assert {m for p, m in modes.items() if os.path.isdir(os.path.join(version, p))} == {0o755}
        assert {m for p, m in modes.items() if os.path.isfile(os.path.join(version, p))} == {0o644}
        image = str(tmp_path / "a.png")
        open(image, "wb").write(_png(16, 16))
        out = str(tmp_path / "pred")
        assert predict_cli.main(["--model", root, "--input", image, "--output", out, "--quiet"]) == 0
        assert sorted(_modes(out).values()) == [0o644] * 3
    finally:
        os.umask(old)


# --------------------------------------------------------------------------- predict.py
@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("tiny_export") / "models")
    sm.export_saved_model(build_tiny_model(), standin_config(), root, warmup=False, verify=False)
    return root


def test_predict_never_overwrites_outputs_of_inputs_with_the_same_name(tiny_export, tmp_path, capsys):
    import cv2

    from gscnn_tf.cli import predict as predict_cli

    images = {}
    for k, folder in enumerate(("x", "y", "z")):
        os.makedirs(tmp_path / folder)
        images[folder] = warmup.synthetic_image(16, 24, seed=k)
        cv2.imwrite(str(tmp_path / folder / "a.png"), cv2.cvtColor(images[folder], cv2.COLOR_RGB2BGR))
    out = str(tmp_path / "out")
    argv = ["--model", tiny_export, "--input", str(tmp_path / "x" / "a.png"), str(tmp_path / "y" / "a.png"),
            str(tmp_path / "z"), "--output", out, "--overlay-alpha", "0", "--quiet"]
    assert predict_cli.main(argv) == 0
    written = sorted(os.listdir(out))
    assert written == sorted(f"{n}_{kind}.png" for n in ("a", "a_2", "a_3") for kind in ("seg", "overlay", "edges"))
    for name, folder in (("a", "x"), ("a_2", "y"), ("a_3", "z")):  # alpha 0: the overlay is the photo itself
        overlay = cv2.cvtColor(cv2.imread(os.path.join(out, f"{name}_overlay.png")), cv2.COLOR_BGR2RGB)
        np.testing.assert_array_equal(overlay, images[folder])


def test_predict_reads_only_regular_files_with_a_size_limit(tiny_export, tmp_path, capsys, caplog):
    from gscnn_tf.cli import predict as predict_cli

    d = tmp_path / "in"
    d.mkdir()
    open(d / "good.png", "wb").write(_png(16, 16))
    os.mkfifo(d / "fifo.png")
    os.symlink("/dev/zero", d / "zero.png")
    big = d / "big.png"
    big.write_bytes(_png(64, 64))
    out = str(tmp_path / "out")
    started = time.monotonic()
    rc = predict_cli.main(["--model", tiny_export, "--input", str(d), "--output", out, "--quiet",
                           "--max-file-size", str(os.path.getsize(d / "good.png"))])
    seconds = time.monotonic() - started
    err = capsys.readouterr().err + caplog.text
    assert rc == 1 and seconds < 60
    assert "fifo.png: not a regular file (a FIFO)" in err and "zero.png: not a regular file (a device)" in err
    assert f"big.png: {big.stat().st_size} bytes, more than the limit" in err
    assert sorted(os.listdir(out)) == ["good_edges.png", "good_overlay.png", "good_seg.png"]


# --------------------------------------------------------------------------- serving client
def test_serving_client_reports_malformed_responses_in_one_line(tmp_path):
    import http.server
    import threading

    bodies = [b"[1, 2]", b'{"predictions": "x"}', b'{"predictions": [{"classes": [[1, 2], [3]]}]}',
              b'{"predictions": [{"classes": [["a", "b"]]}]}',
              b'{"predictions": [{"classes": [[0, 1]], "height": "x"}]}',
              b'{"predictions": [{"classes": [[0, 1]], "height": 5, "width": 2}]}', b'{"predic',
              b'{"predictions": [{"classes": [[0, 1]], "edge": [0.5]}]}', b'{"predictions": [[0, 1]]}']
    served = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            self.rfile.read(int(self.headers["Content-Length"]))
            body = bodies[len(served)]
            served.append(body)
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    image = tmp_path / "a.png"
    image.write_bytes(_png(8, 8))
    try:
        for body in bodies:
            res = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "serving_client.py"), "--server",
                                  f"http://127.0.0.1:{server.server_address[1]}", "--image", str(image),
                                  "--output", str(tmp_path / "out.png")], capture_output=True, text=True, timeout=60)
            assert res.returncode == 1, (body, res.stderr)
            assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr, (body, res.stderr)
            assert not os.path.exists(tmp_path / "out.png")
    finally:
        server.shutdown()
        server.server_close()


# --------------------------------------------------------------------------- quiet CLIs
_NOISE = ("I0000", "E0000", "W0000", "cuInit", "oneDNN", "absl::InitializeLog", "cpu_feature_guard")


@pytest.mark.parametrize("argv", [
    ["predict.py", "--model", "/nonexistent/model", "--input", "/nonexistent/a.png"],
    # One tool in the default run (the import is shared); the others with --runslow.
    pytest.param(["export_savedmodel.py", "--checkpoint", "/nonexistent/run", "--export-dir", "/nonexistent/out"],
                 marks=pytest.mark.slow),
    pytest.param(["evaluate.py", "--checkpoint", "{tmp}"], marks=pytest.mark.slow),
    pytest.param(["train_keras.py", "--config", "configs/cpu_demo.yaml", "--model-dir", "{tmp}/run", "--resume"],
                 marks=pytest.mark.slow),
    pytest.param(["-m", "tfrecords_tools.convert_cityscapes", "cityscapes", "--root", "{src}", "--out", "{tmp}/out",
                  "--splits", "val", "--quiet"], marks=pytest.mark.slow),
])
def test_clis_print_no_tensorflow_startup_noise(argv, cs_src, tmp_path):
    """Each command imports TensorFlow (and fails as a user error, or converts quietly)."""
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL",)}
    env["PYTHONPATH"] = REPO
    argv = [a.replace("{tmp}", str(tmp_path)).replace("{src}", cs_src) for a in argv]
    res = subprocess.run([sys.executable] + argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    lines = res.stderr.strip().splitlines()
    if "--quiet" in argv:
        assert res.returncode == 0 and lines == [], res.stderr
    else:
        assert res.returncode != 0 and "error" in lines[-1], res.stderr
        own_log = r"^\d\d:\d\d:\d\d (INFO|WARNING) "  # the CLI's own logging (INFO by default)
        assert all(re.match(own_log, line) for line in lines[:-1]), res.stderr
    assert not [line for line in lines if any(n in line for n in _NOISE)]
    if argv[0] == "predict.py":  # --log-level DEBUG shows what was hidden
        res = subprocess.run([sys.executable] + argv + ["--log-level", "DEBUG"], cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=300)
        assert any(n in res.stderr for n in _NOISE), res.stderr
