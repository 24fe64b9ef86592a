"""Synthetic Cityscapes generator: layout, label ids, determinism, texture, CLI."""
import glob
import hashlib
import os
import re

import cv2
import numpy as np
import pytest

from gscnn_tf.data import labels
from gscnn_tf.data.synthetic import generate_synthetic_cityscapes
from tfrecords_tools import make_synthetic

H, W = 64, 128
NAME_RE = re.compile(r"^(?P<city>[a-z]+)_(?P<seq>\d{6})_(?P<frame>\d{6})$")


def _digests(root):
    out = {}
    for p in sorted(glob.glob(os.path.join(root, "**", "*.png"), recursive=True)):
        with open(p, "rb") as f:
            out[os.path.relpath(p, root)] = hashlib.sha256(f.read()).hexdigest()
    return out


def _label_path(image_path, kind="labelIds"):
    return image_path.replace(f"{os.sep}leftImg8bit{os.sep}", f"{os.sep}gtFine{os.sep}").replace(
        "_leftImg8bit.png", f"_gtFine_{kind}.png")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("syn"))
    paths = generate_synthetic_cityscapes(root, num_train=6, num_val=2, num_test=2, height=H, width=W, seed=3)
    return root, paths


def test_layout_and_file_names(dataset):
    root, paths = dataset
    assert {k: len(v) for k, v in paths.items()} == {"train": 6, "val": 2, "test": 2}
    for split, imgs in paths.items():
        for p in imgs:
            rel = os.path.relpath(p, root).split(os.sep)
            assert rel[0] == "leftImg8bit" and rel[1] == split and len(rel) == 4
            city, base = rel[2], rel[3]
            assert base.endswith("_leftImg8bit.png")
            m = NAME_RE.match(base[: -len("_leftImg8bit.png")])
            assert m and m["city"] == city
            for kind in ("labelIds", "instanceIds", "color"):
                assert os.path.isfile(_label_path(p, kind)), _label_path(p, kind)
    # No stray files (temporary files from the atomic writes included).
    all_files = glob.glob(os.path.join(root, "**", "*"), recursive=True) + glob.glob(
        os.path.join(root, "**", ".*"), recursive=True)
    assert len([f for f in all_files if os.path.isfile(f)]) == 10 * 4


def test_images_and_labels_are_cityscapes_formats(dataset):
    root, paths = dataset
    seen = set()
    for p in paths["train"] + paths["val"]:
        img = cv2.imread(p, cv2.IMREAD_UNCHANGED)
        lab = cv2.imread(_label_path(p), cv2.IMREAD_UNCHANGED)
        inst = cv2.imread(_label_path(p, "instanceIds"), cv2.IMREAD_UNCHANGED)
        color = cv2.imread(_label_path(p, "color"), cv2.IMREAD_COLOR)[..., ::-1]
        assert img.shape == (H, W, 3) and img.dtype == np.uint8
        assert lab.shape == (H, W) and lab.dtype == np.uint8
        assert inst.dtype == np.uint16 and inst.shape == (H, W)
        assert labels.invalid_label_ids(lab) == []
        # Instance ids: label id for stuff, id * 1000 + k for cars and people, consistent with labelIds.
        cls = np.where(inst >= 1000, inst // 1000, inst)
        np.testing.assert_array_equal(cls, lab)
        # Colour files use the Cityscapes label colours.
        from cityscapesscripts.helpers.labels import id2label

        for v in np.unique(lab):
            assert (color[lab == v] == np.array(id2label[int(v)].color, np.uint8)).all()
        seen |= set(np.unique(lab).tolist())
    train_ids = {int(t) for t in labels.label_ids_to_train_ids(np.array(sorted(seen), np.uint8))} - {255}
    assert len(train_ids) >= 10, train_ids  # many classes
    assert {1, 3} <= seen  # void ids: ego vehicle, out of roi
    assert {17, 19, 20, 24, 26} & seen >= {17, 26}  # poles (thin) and cars at least


def test_test_split_labels_are_empty(dataset):
    root, paths = dataset
    for p in paths["test"]:
        assert not cv2.imread(_label_path(p), cv2.IMREAD_UNCHANGED).any()
        assert cv2.imread(p).std() > 10  # but the image is a real scene


def test_texture_boundaries_and_learnability(dataset):
    """Colours separate classes well (nearest class mean) but not perfectly; textures vary."""
    root, paths = dataset
    imgs = np.stack([cv2.imread(p)[..., ::-1] for p in paths["train"]]).astype(np.float32)
    labs = np.stack([cv2.imread(_label_path(p), cv2.IMREAD_UNCHANGED) for p in paths["train"]])
    classes = [c for c in np.unique(labs) if (labs == c).sum() > 50]
    means = np.stack([imgs[labs == c].mean(0) for c in classes])
    dist = ((imgs[..., None, :] - means) ** 2).sum(-1)
    pred = np.array(classes)[dist.argmin(-1)]
    acc = (pred == labs).mean()
    assert 0.5 < acc < 0.98, acc
    road = imgs[labs == 7]
    assert road.std(0).mean() > 4  # noise/shading, not flat colour
    # Plenty of class boundaries: >= 5 % of pixels differ from their right or lower neighbour.
    edges = (labs[:, :, 1:] != labs[:, :, :-1]).mean() + (labs[:, 1:] != labs[:, :-1]).mean()
    assert edges > 0.05, edges


def test_deterministic_by_seed(tmp_path, dataset):
    root, _ = dataset
    a = _digests(root)
    again = str(tmp_path / "again")
    generate_synthetic_cityscapes(again, num_train=6, num_val=2, num_test=2, height=H, width=W, seed=3)
    assert _digests(again) == a
    # Each image depends only on (seed, split, index): other counts do not change it.
    fewer = str(tmp_path / "fewer")
    generate_synthetic_cityscapes(fewer, num_train=2, num_val=0, height=H, width=W, seed=3)
    b = _digests(fewer)
    assert b and all(a[k] == v for k, v in b.items())
    other = str(tmp_path / "other")
    generate_synthetic_cityscapes(other, num_train=2, num_val=0, height=H, width=W, seed=4)
    c = _digests(other)
    assert c.keys() == b.keys() and all(c[k] != b[k] for k in c if "leftImg8bit" in k)


def test_sizes_and_bad_arguments(tmp_path):
    out = generate_synthetic_cityscapes(str(tmp_path / "r"), num_train=1, num_val=0, height=96, width=160, seed=0)
    assert cv2.imread(out["train"][0]).shape == (96, 160, 3)
    with pytest.raises(ValueError, match="too small"):
        generate_synthetic_cityscapes(str(tmp_path / "x"), num_train=1, height=8, width=8)
    with pytest.raises(ValueError, match="num_val"):
        generate_synthetic_cityscapes(str(tmp_path / "x"), num_train=1, num_val=-1)


def test_cli(tmp_path, capsys):
    root = str(tmp_path / "cli")
    rc = make_synthetic.main([root, "--num-train", "2", "--num-val", "1", "--height", "64", "--width", "128",
                              "--seed", "3", "--quiet"])
    assert rc == 0
    assert len(glob.glob(os.path.join(root, "leftImg8bit", "train", "*", "*.png"))) == 2
    assert len(glob.glob(os.path.join(root, "gtFine", "val", "*", "*_labelIds.png"))) == 1
    rc = make_synthetic.main([str(tmp_path / "bad"), "--height", "4", "--quiet"])
    err = capsys.readouterr().err
    assert rc != 0 and "too small" in err and "Traceback" not in err
