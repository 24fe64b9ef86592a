"""Cityscapes -> TFRecord converter: round trip, manifest, verify, resume, bad input, zips, folders."""
import glob
import hashlib
import json
import os
import shutil
import zipfile

import cv2
import numpy as np
import pytest
import tensorflow as tf

from gscnn_tf.data import convert, label_maps, labels, shards
from gscnn_tf.data.cityscapes import ConversionError, discover_cityscapes
from gscnn_tf.data.synthetic import generate_synthetic_cityscapes
from gscnn_tf.data.tfexample import decode_example, parse_example
from gscnn_tf.data.verify import VerificationError, verify
from tfrecords_tools import convert_cityscapes as cli

H, W = 64, 128
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("cs"))
    generate_synthetic_cityscapes(root, num_train=4, num_val=2, num_test=2, height=H, width=W, seed=5)
    return root


@pytest.fixture(scope="module")
def converted(src, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("tfr"))
    manifests = convert.convert_cityscapes(src, out, splits=("train", "val", "test"), num_shards=2)
    return out, manifests


@pytest.fixture
def root(src, tmp_path):
    """A private, mutable copy of the synthetic root."""
    dst = str(tmp_path / "root")
    shutil.copytree(src, dst)
    return dst


def records(out, split):
    rows = []
    for path in sorted(glob.glob(os.path.join(out, f"{split}_fine-*.tfrecord"))):
        for raw in tf.data.TFRecordDataset(path):
            image, label, name = decode_example(parse_example(raw))
            rows.append((image.numpy(), label.numpy(), name.numpy().decode()))
    return rows


def shard_files(out):
    return sorted(os.path.basename(p) for p in glob.glob(os.path.join(out, "*.tfrecord")))


def leftovers(out):
    """Temporary files anywhere under ``out`` (atomic writes' temporary names end in .tmp*)."""
    return [p for p in glob.glob(os.path.join(out, ".*")) + glob.glob(os.path.join(out, "*")) if ".tmp" in p]


def digest(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def run_cli(argv, capsys):
    rc = cli.main(argv + ["--quiet"])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return rc, err


# --------------------------------------------------------------------------- round trip
def test_round_trip_exact_pixels_and_train_ids(src, converted):
    out, manifests = converted
    lut = labels.label_id_to_train_id_lut()
    for split in ("train", "val"):
        rows = records(out, split)
        samples = {s.name: s for s in discover_cityscapes(src, split)}
        assert sorted(r[2] for r in rows) == sorted(samples)
        for image, label, name in rows:
            s = samples[name]
            expected_img = cv2.imread(s.image.path, cv2.IMREAD_COLOR)[..., ::-1]
            raw = cv2.imread(s.label.path, cv2.IMREAD_UNCHANGED)
            np.testing.assert_array_equal(image, expected_img)
            np.testing.assert_array_equal(label, lut[raw])
            assert set(np.unique(label)) <= set(range(19)) | {255}
            assert (label < 19).any() and (label == 255).any()  # real classes and void ids present
    # Test split: written without labels -> decode_example yields all-ignore.
    rows = records(out, "test")
    assert len(rows) == 2 and all((r[1] == 255).all() and r[1].shape == (H, W) for r in rows)
    assert manifests["test"]["has_labels"] is False


def test_images_keep_their_original_bytes(src, converted):
    out, _ = converted
    samples = {s.name: s for s in discover_cityscapes(src, "val")}
    seen = []
    for path in glob.glob(os.path.join(out, "val_fine-*.tfrecord")):
        for raw in tf.data.TFRecordDataset(path):
            p = parse_example(raw)
            name = p["image/filename"].numpy().decode()
            seen.append(name)
            with open(samples[name].image.path, "rb") as f:
                assert p["image/encoded"].numpy() == f.read()
            assert p["image/format"].numpy() == b"png"
            assert int(p["image/height"]) == H and int(p["image/width"]) == W
    assert sorted(seen) == sorted(samples)  # every image was checked, once


def test_manifest_contents(converted):
    out, manifests = converted
    for split, n in (("train", 4), ("val", 2), ("test", 2)):
        with open(os.path.join(out, f"{split}_manifest.json")) as f:
            m = json.load(f)
        assert m == manifests[split]
        assert m["num_examples"] == n and m["num_shards"] == 2
        assert sum(s["num_examples"] for s in m["shards"]) == n
        for s in m["shards"]:
            assert s["file"] == f"{split}_fine-{m['shards'].index(s):05d}-of-00002.tfrecord"
            assert digest(os.path.join(out, s["file"])) == s["sha256"]
            assert os.path.getsize(os.path.join(out, s["file"])) == s["bytes"]
        assert m["label_mapping"]["mapping"]["26"] == 13 and m["label_mapping"]["mapping"]["1"] == 255
        assert m["source"]["kind"] == "cityscapes-folder" and m["tool_version"] and m["created"]
    assert leftovers(out) == []


# --------------------------------------------------------------------------- verify
def test_verify_passes_then_fails_naming_the_flipped_shard(converted, tmp_path, capsys):
    out, _ = converted
    assert verify(out) == {"test": {"num_examples": 2, "num_shards": 2},
                                   "train": {"num_examples": 4, "num_shards": 2},
                                   "val": {"num_examples": 2, "num_shards": 2}}
    copy = str(tmp_path / "copy")
    shutil.copytree(out, copy)
    victim = os.path.join(copy, "val_fine-00001-of-00002.tfrecord")
    data = bytearray(open(victim, "rb").read())
    data[len(data) // 2] ^= 0x01
    open(victim, "wb").write(bytes(data))
    with pytest.raises(VerificationError, match="val_fine-00001-of-00002.tfrecord"):
        verify(copy)
    verify(copy, splits=["train"])  # the other splits are still fine
    rc, err = run_cli(["verify", "--out", copy], capsys)
    assert rc == 1 and "val_fine-00001-of-00002.tfrecord" in err and "sha256" in err


def test_verify_decodes_records_and_finds_bad_labels(converted, tmp_path):
    """A shard whose manifest checksum was 'fixed' up still fails on its content."""
    out, _ = converted
    copy = str(tmp_path / "copy")
    shutil.copytree(out, copy)
    from gscnn_tf.data.tfexample import make_example

    path = os.path.join(copy, "val_fine-00000-of-00002.tfrecord")
    img = cv2.imencode(".png", np.zeros((H, W, 3), np.uint8))[1].tobytes()
    bad_label = cv2.imencode(".png", np.full((H, W), 77, np.uint8))[1].tobytes()
    with tf.io.TFRecordWriter(path) as w:
        w.write(make_example(img, bad_label, "x", H, W).SerializeToString())
        w.write(make_example(img, bad_label, "x", H + 1, W).SerializeToString())
    mpath = os.path.join(copy, "val_manifest.json")
    m = json.load(open(mpath))
    m["shards"][0].update(sha256=digest(path), bytes=os.path.getsize(path))
    json.dump(m, open(mpath, "w"))
    with pytest.raises(VerificationError) as e:
        verify(copy, splits=["val"])
    msg = str(e.value)
    assert "label values [77]" in msg and "duplicate filename x" in msg and "header says" in msg
    assert "3 records, manifest says 1" not in msg and "2 records, manifest says 1" in msg


def test_verify_reports_missing_and_unlisted_shards(converted, tmp_path):
    out, _ = converted
    copy = str(tmp_path / "copy")
    shutil.copytree(out, copy)
    os.remove(os.path.join(copy, "train_fine-00000-of-00002.tfrecord"))
    shutil.copy(os.path.join(copy, "val_fine-00000-of-00002.tfrecord"),
                os.path.join(copy, "val_fine-00000-of-00009.tfrecord"))
    with pytest.raises(VerificationError) as e:
        verify(copy)
    assert "train_fine-00000-of-00002.tfrecord: shard missing" in str(e.value)
    assert "val_fine-00000-of-00009.tfrecord: shard not listed" in str(e.value)


# --------------------------------------------------------------------------- resume / interrupt
def test_rerun_skips_complete_shards_and_is_deterministic(root, tmp_path):
    out = str(tmp_path / "out")
    convert.convert_samples(discover_cityscapes(root, "train"), out, "train", label_maps.cityscapes_mapping(),
                            num_shards=2)
    before = {f: (os.stat(os.path.join(out, f)).st_mtime_ns, digest(os.path.join(out, f))) for f in shard_files(out)}
    convert.convert_cityscapes(root, out, splits=("train",), num_shards=2)
    after = {f: (os.stat(os.path.join(out, f)).st_mtime_ns, digest(os.path.join(out, f))) for f in shard_files(out)}
    # The library's direct call did not shuffle, the wrapper does (train): different plan, shards rewritten.
    assert before.keys() == after.keys()
    again_time = {f: os.stat(os.path.join(out, f)).st_mtime_ns for f in shard_files(out)}
    convert.convert_cityscapes(root, out, splits=("train",), num_shards=2)
    assert {f: os.stat(os.path.join(out, f)).st_mtime_ns for f in shard_files(out)} == again_time  # skipped
    # force rewrites, byte-identically.
    convert.convert_cityscapes(root, out, splits=("train",), num_shards=2, force=True)
    assert {f: digest(os.path.join(out, f)) for f in shard_files(out)} == {f: v[1] for f, v in after.items()}
    # A different shard count replaces the old shards (no mixture of plans is left).
    convert.convert_cityscapes(root, out, splits=("train",), num_shards=3)
    assert shard_files(out) == [f"train_fine-{i:05d}-of-00003.tfrecord" for i in range(3)]
    verify(out)


def interrupt_encoding_at(monkeypatch, n: int):
    """Makes the n-th record encoding raise KeyboardInterrupt; returns the real encoder."""
    real = shards.encode_sample
    calls = []

    def encode_then_interrupt(*a, **k):
        calls.append(1)
        if len(calls) == n:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(shards, "encode_sample", encode_then_interrupt)
    return real


def test_interrupt_leaves_only_complete_shards_and_rerun_completes(root, tmp_path, capsys, monkeypatch):
    out = str(tmp_path / "out")
    real = interrupt_encoding_at(monkeypatch, 3)  # first record of the second shard (2 train images per shard)
    with pytest.raises(KeyboardInterrupt):
        convert.convert_cityscapes(root, out, splits=("train",), num_shards=2)
    monkeypatch.setattr(shards, "encode_sample", real)
    assert shard_files(out) == ["train_fine-00000-of-00002.tfrecord"]
    assert leftovers(out) == [] and not os.path.exists(os.path.join(out, "train_manifest.json"))
    side = json.load(open(os.path.join(out, ".train_fine-00000-of-00002.tfrecord.json")))
    assert side["sha256"] == digest(os.path.join(out, "train_fine-00000-of-00002.tfrecord"))
    first = os.stat(os.path.join(out, "train_fine-00000-of-00002.tfrecord")).st_mtime_ns
    rc, err = run_cli(["cityscapes", "--root", root, "--out", out, "--splits", "train", "--num-shards", "2"], capsys)
    assert rc == 0, err
    rc, err = run_cli(["verify", "--out", out], capsys)
    assert rc == 0, err
    assert os.stat(os.path.join(out, "train_fine-00000-of-00002.tfrecord")).st_mtime_ns == first  # resumed
    assert len(shard_files(out)) == 2
    verify(out)


def test_worker_failure_midway_names_file_and_cleans_up(root, tmp_path, capsys):
    """A PNG with an intact header but corrupt data passes the pre-pass and fails in the writer."""
    out = str(tmp_path / "out")
    samples = discover_cityscapes(root, "val")
    victim = samples[-1].image.path  # in the last shard (val is not shuffled)
    good = open(victim, "rb").read()
    data = bytearray(good)
    data[len(data) // 2] ^= 0xFF
    open(victim, "wb").write(bytes(data))
    with pytest.raises(ConversionError, match=os.path.basename(victim)):
        convert.convert_cityscapes(root, out, splits=("val",), num_shards=2)
    assert shard_files(out) == ["val_fine-00000-of-00002.tfrecord"] and leftovers(out) == []
    rc, err = run_cli(["cityscapes", "--root", root, "--out", out, "--splits", "val", "--num-shards", "2"], capsys)
    assert rc == 1 and victim in err and "cannot decode image" in err
    open(victim, "wb").write(good)
    rc, err = run_cli(["cityscapes", "--root", root, "--out", out, "--splits", "val", "--num-shards", "2"], capsys)
    assert rc == 0 and len(shard_files(out)) == 2
    verify(out)


def test_cli_interrupt_exits_nonzero_and_keeps_only_complete_shards(root, tmp_path, capsys, monkeypatch):
    out = str(tmp_path / "out")
    real = interrupt_encoding_at(monkeypatch, 3)  # first record of the second shard (2 train images per shard)
    rc, err = run_cli(["cityscapes", "--root", root, "--out", out, "--splits", "train", "--num-shards", "2"], capsys)
    assert rc == 130 and "stopped by SIGINT" in err and "rerun" in err
    assert shard_files(out) == ["train_fine-00000-of-00002.tfrecord"] and leftovers(out) == []
    rerun = []

    def counting(*a, **k):
        rerun.append(1)
        return real(*a, **k)

    monkeypatch.setattr(shards, "encode_sample", counting)
    rc, err = run_cli(["cityscapes", "--root", root, "--out", out, "--splits", "train", "--num-shards", "2"], capsys)
    assert rc == 0 and len(rerun) == 2  # only the unfinished shard's 2 images were encoded again
    verify(out)


def test_stale_temporary_files_are_removed(root, tmp_path):
    out = str(tmp_path / "out")
    os.makedirs(out)
    stale = os.path.join(out, ".val_fine-00000-of-00001.tfrecord.abc123.tmp.tfrecord")
    open(stale, "wb").write(b"half a shard")
    convert.convert_cityscapes(root, out, splits=("val",), num_shards=1)
    assert not os.path.exists(stale) and leftovers(out) == []


# --------------------------------------------------------------------------- bad input
def _label_of(image_path):
    return image_path.replace(f"{os.sep}leftImg8bit{os.sep}", f"{os.sep}gtFine{os.sep}").replace(
        "_leftImg8bit.png", "_gtFine_labelIds.png")


def _first_image(root, split="train"):
    return sorted(glob.glob(os.path.join(root, "leftImg8bit", split, "*", "*.png")))[0]


def _expect_failure(root, tmp_path, capsys, needle, splits=("train",)):
    out = str(tmp_path / "out")
    rc, err = run_cli(["cityscapes", "--root", root, "--out", out, "--splits", *splits], capsys)
    assert rc == 1, err
    assert needle in err, err
    assert shard_files(out) == [] if os.path.isdir(out) else True
    if os.path.isdir(out):
        assert leftovers(out) == []
    return err


def test_missing_label_file(root, tmp_path, capsys):
    img = _first_image(root)
    os.remove(_label_of(img))
    err = _expect_failure(root, tmp_path, capsys, img)
    assert "no matching" in err


def test_label_without_image(root, tmp_path, capsys):
    img = _first_image(root)
    os.remove(img)
    err = _expect_failure(root, tmp_path, capsys, _label_of(img))
    assert "without a matching" in err


def test_truncated_png(root, tmp_path, capsys):
    lab = _label_of(_first_image(root))
    data = open(lab, "rb").read()
    open(lab, "wb").write(data[: len(data) // 2])
    err = _expect_failure(root, tmp_path, capsys, lab)
    assert "truncated" in err


def test_unreadable_png(root, tmp_path, capsys):
    img = _first_image(root)
    open(img, "wb").write(b"this is not an image at all, just text" * 3)
    err = _expect_failure(root, tmp_path, capsys, img)
    assert "not a PNG" in err


def test_image_label_size_mismatch(root, tmp_path, capsys):
    img = _first_image(root)
    lab = _label_of(img)
    cv2.imwrite(lab, cv2.imread(lab, cv2.IMREAD_UNCHANGED)[: H // 2])
    err = _expect_failure(root, tmp_path, capsys, lab)
    assert f"{W}x{H // 2}" in err and f"{W}x{H}" in err


def test_label_ids_outside_cityscapes_table(root, tmp_path, capsys):
    lab = _label_of(_first_image(root))
    arr = cv2.imread(lab, cv2.IMREAD_UNCHANGED)
    arr[5:9, 5:9] = 34  # 0..33 are Cityscapes ids
    arr[0, 0] = 200
    cv2.imwrite(lab, arr)
    err = _expect_failure(root, tmp_path, capsys, lab)
    assert "[34, 200]" in err


def test_empty_split(root, tmp_path, capsys):
    shutil.rmtree(os.path.join(root, "leftImg8bit", "val"))
    err = _expect_failure(root, tmp_path, capsys, "empty split", splits=("train", "val"))
    assert os.path.join("leftImg8bit", "val") in err
    assert not os.path.exists(os.path.join(tmp_path / "out", "train_manifest.json"))  # failed before writing


def test_not_a_cityscapes_root(tmp_path, capsys):
    rc, err = run_cli(["cityscapes", "--root", str(tmp_path), "--out", str(tmp_path / "o")], capsys)
    assert rc == 1 and str(tmp_path) in err and "leftImg8bit" in err


def test_output_directory_not_writable(root, tmp_path, capsys, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("I am a file")
    for out in (str(blocker), str(blocker / "sub")):
        rc, err = run_cli(["cityscapes", "--root", root, "--out", out, "--splits", "val"], capsys)
        assert rc == 1 and out in err, err
    if os.geteuid() != 0:  # root ignores permission bits
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        rc, err = run_cli(["cityscapes", "--root", root, "--out", str(ro), "--splits", "val"], capsys)
        assert rc == 1 and "not writable" in err

    def deny(*a, **k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(shards.tempfile, "mkstemp", deny)  # what a read-only directory does to a non-root user
    rc, err = run_cli(["cityscapes", "--root", root, "--out", str(tmp_path / "o2"), "--splits", "val"], capsys)
    assert rc == 1 and "o2: output directory is not writable (Permission denied)" in err


# --------------------------------------------------------------------------- zips, folders, workers
def test_official_zip_layout_gives_identical_records(src, converted, tmp_path):
    zroot = tmp_path / "zips"
    zroot.mkdir()
    for top, zname in (("leftImg8bit", "leftImg8bit_trainvaltest.zip"), ("gtFine", "gtFine_trainvaltest.zip")):
        with zipfile.ZipFile(zroot / zname, "w", zipfile.ZIP_DEFLATED) as zf:
            zf.writestr("README", "synthetic")
            for p in sorted(glob.glob(os.path.join(src, top, "**", "*.png"), recursive=True)):
                zf.write(p, os.path.relpath(p, src).replace(os.sep, "/"))
    out = str(tmp_path / "out")
    manifests = convert.convert_cityscapes(str(zroot), out, splits=("train", "val", "test"), num_shards=2)
    assert manifests["val"]["source"]["kind"] == "cityscapes-zip"
    ref_out, ref = converted
    for split in ("train", "val", "test"):
        assert [s["sha256"] for s in manifests[split]["shards"]] == [s["sha256"] for s in ref[split]["shards"]]
    verify(out)
    # A missing label archive is named.
    os.remove(zroot / "gtFine_trainvaltest.zip")
    with pytest.raises(ConversionError, match="gtFine_trainvaltest.zip"):
        convert.convert_cityscapes(str(zroot), out, splits=("val",))


def _generic_folder(tmp_path):
    imgs, labs = tmp_path / "images", tmp_path / "labels"
    (imgs / "a").mkdir(parents=True)
    labs.mkdir()
    (labs / "a").mkdir()
    rng = np.random.default_rng(0)
    expected = {}
    for i, ext in enumerate((".png", ".jpg", ".png")):
        img = rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)
        lab = rng.choice(np.array([0, 10, 20], np.uint8), (20, 30))
        name = f"a/img{i}"
        cv2.imwrite(str(imgs / (name + ext)), img)
        cv2.imwrite(str(labs / (name + "_mask.png")), lab)
        # TF's and OpenCV's JPEG decoders differ by a few levels: the reference is TF's decode of the file.
        ref = tf.io.decode_image(open(imgs / (name + ext), "rb").read(), channels=3).numpy()
        assert np.abs(ref.astype(int) - cv2.imread(str(imgs / (name + ext)))[..., ::-1]).max() <= (
            0 if ext == ".png" else 20)
        expected[name] = (ref, lab)
    return str(imgs), str(labs), expected


def test_generic_folder_with_label_map(tmp_path, capsys):
    imgs, labs, expected = _generic_folder(tmp_path)
    lmap = tmp_path / "map.yaml"
    lmap.write_text("0: 255\n10: 0\n20: 1\n")
    out = str(tmp_path / "out")
    rc, err = run_cli(["folder", "--images", imgs, "--labels", labs, "--label-map", str(lmap), "--label-suffix",
                       "_mask", "--out", out, "--split", "val"], capsys)
    assert rc == 0, err
    lut = np.full(256, 99, np.uint8)
    lut[[0, 10, 20]] = [255, 0, 1]
    rows = records(out, "val")
    assert sorted(r[2] for r in rows) == sorted(expected)
    for image, label, name in rows:
        np.testing.assert_array_equal(image, expected[name][0])
        np.testing.assert_array_equal(label, lut[expected[name][1]])
    m = json.load(open(os.path.join(out, "val_manifest.json")))
    assert m["label_mapping"]["mapping"] == {"0": 255, "10": 0, "20": 1} and m["train_ids"] == [0, 1, 255]
    verify(out)

    # Unmapped values: error (naming the file) or ignore, as the user chooses.
    json_map = tmp_path / "map.json"
    json_map.write_text(json.dumps({"10": 0, "20": 1}))
    rc, err = run_cli(["folder", "--images", imgs, "--labels", labs, "--label-map", str(json_map),
                       "--label-suffix", "_mask", "--out", str(tmp_path / "o2")], capsys)
    assert rc == 1 and "img0_mask.png" in err and "[0]" in err
    rc, err = run_cli(["folder", "--images", imgs, "--labels", labs, "--label-map", str(json_map),
                       "--label-suffix", "_mask", "--unmapped", "ignore", "--out", str(tmp_path / "o3")], capsys)
    assert rc == 0, err
    for _image, label, name in records(str(tmp_path / "o3"), "train"):
        np.testing.assert_array_equal(label, lut[expected[name][1]])

    # Bad label maps and pairing.
    bad = tmp_path / "bad.json"
    bad.write_text('{"10": "road"}')
    rc, err = run_cli(["folder", "--images", imgs, "--labels", labs, "--label-map", str(bad),
                       "--label-suffix", "_mask", "--out", str(tmp_path / "o4")], capsys)
    assert rc == 1 and "bad.json" in err
    rc, err = run_cli(["folder", "--images", imgs, "--labels", labs, "--label-map", str(lmap),
                       "--out", str(tmp_path / "o5")], capsys)  # wrong suffix -> no labels found
    assert rc == 1 and "no matching label" in err


@pytest.mark.slow
def test_parallel_workers_write_identical_shards(src, converted, tmp_path):
    out = str(tmp_path / "par")
    manifests = convert.convert_cityscapes(src, out, splits=("train", "val", "test"), num_shards=2, workers=2)
    for split in ("train", "val", "test"):
        assert [s["sha256"] for s in manifests[split]["shards"]] == \
            [s["sha256"] for s in converted[1][split]["shards"]]
    assert leftovers(out) == []
