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
import shutil
import signal
import subprocess
import sys
import time

import pytest

from gscnn_tf.data import convert
from gscnn_tf.data.cityscapes import discover_cityscapes
from gscnn_tf.data.synthetic import generate_synthetic_cityscapes
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
    assert convert.verify(out)["val"] == {"num_examples": 2, "num_shards": 2}
    # The train split (6 images): re-convert into 4 shards with one bad image -> old 3 shards kept.
    tvictim = sorted(s.image.path for s in discover_cityscapes(cs_root, "train"))[0]
    tgood = _corrupt_middle(tvictim)
    train_before = {k: v for k, v in _snapshot(out).items() if k.startswith("train")}
    rc, err = _run_convert(["cityscapes", "--root", cs_root, "--out", out, "--splits", "train",
                            "--num-shards", "4"], capsys)
    assert rc == 1 and tvictim in err and len(err.strip().splitlines()) == 1
    assert {k: v for k, v in _snapshot(out).items() if k.startswith("train")} == train_before
    convert.verify(out)
    # Fixed input: the rerun completes the new split and swaps it in, no staging left.
    open(victim, "wb").write(good)
    open(tvictim, "wb").write(tgood)
    rc, err = _run_convert(["cityscapes", "--root", cs_root, "--out", out, "--splits", "train", "val",
                            "--num-shards", "4"], capsys)
    assert rc == 0, err
    report = convert.verify(out)
    assert report["train"] == {"num_examples": 6, "num_shards": 4} and report["val"]["num_shards"] == 2
    assert not glob.glob(os.path.join(out, ".*staging*"))


def test_interrupted_swap_is_finished_by_the_next_run(cs_root, tmp_path, monkeypatch):
    out = str(tmp_path / "out")
    convert.convert_cityscapes(cs_root, out, splits=("train",), num_shards=2)
    real = convert._move_shard
    calls = []

    def move_then_die(*a):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # killed in the middle of the swap
        return real(*a)

    monkeypatch.setattr(convert, "_move_shard", move_then_die)
    with pytest.raises(KeyboardInterrupt):
        convert.convert_cityscapes(cs_root, out, splits=("train",), num_shards=3)
    monkeypatch.setattr(convert, "_move_shard", real)
    assert not os.path.exists(os.path.join(out, "train_manifest.json"))  # half-swapped: no manifest claims it
    encoded = []
    monkeypatch.setattr(convert, "encode_sample", lambda *a, **k: encoded.append(1))
    manifest = convert.convert_cityscapes(cs_root, out, splits=("train",), num_shards=3)["train"]
    assert encoded == []  # everything came from the staged shards
    assert manifest["num_shards"] == 3 and convert.verify(out)["train"]["num_shards"] == 3


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


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
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
    deadline = time.time() + 10
    while time.time() < deadline and any(_alive(p) for p in workers):
        time.sleep(0.1)
    orphans = [p for p in workers if _alive(p)]
    for p in orphans:  # do not leave them running if the test fails
        os.kill(p, signal.SIGKILL)
    assert orphans == []
    # The next run starts cleanly (the dead run's lock is gone) and completes.
    res = subprocess.run([sys.executable, "-m", "tfrecords_tools.convert_cityscapes", "cityscapes", "--root", cs_src,
                          "--out", out, "--splits", "train", "--num-shards", "3", "--quiet"], cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert convert.verify(out)["train"]["num_shards"] == 3


def test_second_converter_on_the_same_out_is_refused(cs_root, tmp_path, capsys):
    out = str(tmp_path / "out")
    os.makedirs(out)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from gscnn_tf.data.convert import output_lock\n"
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
        side = json.load(open(convert.sidecar_path(shard)))
        assert side["sha256"] == _digest(shard)
