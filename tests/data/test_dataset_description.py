"""The dataset description (config ``dataset:``): a 5-class folder dataset end to end, with no Cityscapes leaking.

The dataset: 32x48 images whose label PNGs hold the source values 10, 20, 30, 40, 50 (classes
``alpha``..``epsilon``) and 7 (void -> ignore label 200), described by one YAML file that is both
the converter's ``--label-map`` and the config's ``dataset:`` section.
"""
import dataclasses
import glob
import json
import os
import re

import cv2
import numpy as np
import pytest
import yaml
from conftest import TINY_MODEL

from gscnn_tf.config import ConfigError, load_config
from gscnn_tf.data import labels as cityscapes
from gscnn_tf.data import shard_checks
from gscnn_tf.data.cityscapes import ConversionError
from gscnn_tf.data.label_maps import load_label_map
from tfrecords_tools import convert_cityscapes as convert_cli

SOURCE_IDS = (10, 20, 30, 40, 50)
VOID = 7
DESCRIPTION = {
    "name": "toy",
    "class_names": ["alpha", "beta", "gamma", "delta", "epsilon"],
    "class_colors": [[1, 2, 3], [11, 12, 13], [21, 22, 23], [31, 32, 33], [41, 42, 43]],
    "ignore_label": 200,
    "label_map": {**{s: i for i, s in enumerate(SOURCE_IDS)}, VOID: 200},
    "categories": ["first", "first", "second", "second", "second"],
}
CITYSCAPES_WORDS = set(cityscapes.CLASS_NAMES) | set(cityscapes.CATEGORY_NAMES)


def _write_split(folder, n, seed):
    """``n`` 32x48 RGB images and label PNGs of vertical stripes of the source values (and void)."""
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(folder, "images"))
    os.makedirs(os.path.join(folder, "labels"))
    values = np.array(SOURCE_IDS + (VOID,), np.uint8)
    for i in range(n):
        label = np.repeat(values[(np.arange(48) // 8 + i) % len(values)][None], 32, axis=0)
        image = (rng.integers(0, 40, (32, 48, 3)) + label[..., None] * 4).astype(np.uint8)
        cv2.imwrite(os.path.join(folder, "images", f"img{i}.png"), image)
        cv2.imwrite(os.path.join(folder, "labels", f"img{i}.png"), label)


def _convert(root, out, split, label_map, capsys):
    rc = convert_cli.main(["folder", "--images", os.path.join(root, split, "images"), "--labels",
                           os.path.join(root, split, "labels"), "--label-map", label_map, "--split", split,
                           "--out", out, "--quiet"])
    err = capsys.readouterr().err
    assert rc == 0, err
    return os.path.join(out, f"{split}_fine-*.tfrecord")


@pytest.fixture
def toy(tmp_path, capsys):
    """The folder dataset converted with its description; returns paths and an experiment config file."""
    root = str(tmp_path / "toy")
    _write_split(os.path.join(root, "train"), 4, 0)
    _write_split(os.path.join(root, "val"), 2, 1)
    label_map = str(tmp_path / "toy_dataset.yaml")
    with open(label_map, "w") as f:
        yaml.safe_dump(DESCRIPTION, f)
    records = str(tmp_path / "records")
    train, val = (_convert(root, records, split, label_map, capsys) for split in ("train", "val"))
    config = str(tmp_path / "toy.yaml")
    with open(config, "w") as f:
        yaml.safe_dump({
            "model": {**TINY_MODEL, "num_classes": 5},
            "dataset": yaml.safe_load(open(label_map)),  # the converter's file, pasted
            "data": {"train_pattern": train, "val_pattern": val, "crop_size": [32, 48], "shuffle_buffer": 4,
                     "min_scale": 1.0, "max_scale": 1.0},
            "train": {"model_dir": str(tmp_path / "run"), "batch_size": 2, "epochs": 1, "steps_per_epoch": 1,
                      "image_summaries": 1, "seed": 0},
            "eval": {"distance_crop_fractions": [1.0]},
        }, f)
    return {"root": root, "records": records, "label_map": label_map, "config": config, "tmp": tmp_path}


def test_one_file_describes_the_dataset_for_converter_and_config(toy):
    cfg = load_config(toy["config"])
    assert cfg.dataset.class_names == DESCRIPTION["class_names"] and cfg.dataset.ignore_label == 200
    assert cfg.dataset.label_map == DESCRIPTION["label_map"]
    mapping = load_label_map(toy["label_map"])
    assert mapping.ignore_label == 200 and mapping.lut[VOID] == 200 and mapping.lut[30] == 2
    manifest = json.load(open(os.path.join(toy["records"], "val_manifest.json")))
    assert manifest["label_mapping"]["name"] == "toy"
    assert manifest["label_mapping"]["class_colors"] == DESCRIPTION["class_colors"]
    assert manifest["train_ids"] == [0, 1, 2, 3, 4, 200]
    assert shard_checks.check_shards(os.path.join(toy["records"], "val_fine-*.tfrecord"), "data.val_pattern",
                                     cfg.dataset) == 2
    # Predictions written back as source ids: the inverse of label_map.
    assert [int(v) for v in cfg.dataset.source_id_lut()[:5]] == list(SOURCE_IDS)


def test_an_experiment_config_is_a_label_map_through_its_base_chain(toy, tmp_path):
    """configs/camvid_*.yaml style: the experiment file (or one naming it as base) is --label-map."""
    child = tmp_path / "toy_baseline.yaml"
    child.write_text(f"base: {os.path.basename(toy['config'])}\nmodel: {{shape_stream: false}}\n")
    for path in (toy["config"], str(child)):
        mapping = load_label_map(path)
        assert mapping.name == "toy" and list(mapping.class_names) == DESCRIPTION["class_names"]
        expected = np.full(256, 200, np.uint8)
        for source, train_id in DESCRIPTION["label_map"].items():
            expected[source] = train_id
        np.testing.assert_array_equal(mapping.lut, expected)
        assert mapping.known.sum() == len(DESCRIPTION["label_map"])
    broken = tmp_path / "broken.yaml"
    broken.write_text("dataset: {class_names: [a, b], ignore_label: 1}\n")
    with pytest.raises(ConversionError, match=r"broken.yaml: .*dataset.ignore_label"):
        load_label_map(str(broken))


def test_a_manifest_of_another_dataset_is_refused_naming_file_and_field(toy, capsys):
    """Cityscapes config (the default) on the toy shards: exit 2, naming the manifest and the field; nothing written."""
    from gscnn_tf.cli.train import main

    run, config = str(toy["tmp"] / "cityscapes_run"), toy["tmp"] / "cityscapes.yaml"
    config.write_text(yaml.safe_dump({"model": TINY_MODEL, "train": {"model_dir": run},
                                      "data": {"train_pattern": f"{toy['records']}/train_fine-*.tfrecord"}}))
    code = main(["--config", str(config), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "train_manifest.json" in err and "class_names" in err and "ignore_label" in err, err
    assert not os.path.exists(run)


def test_labels_above_the_class_count_are_refused_naming_the_manifest(toy, capsys):
    flat = str(toy["tmp"] / "flat.yaml")
    with open(flat, "w") as f:
        yaml.safe_dump({10: 0, 20: 1, 30: 2, 40: 3, 50: 7, VOID: 255}, f)
    pattern = _convert(toy["root"], str(toy["tmp"] / "flat_records"), "val", flat, capsys)
    dataset = dataclasses.replace(load_config(toy["config"]).dataset, ignore_label=255,
                                  label_map={**DESCRIPTION["label_map"], VOID: 255})
    with pytest.raises(shard_checks.ShardCheckError, match=r"val_manifest.json: labels \[7\] are not train ids"):
        shard_checks.check_shards(pattern, "data.val_pattern", dataset)


@pytest.mark.parametrize("override, field", [
    ("dataset.ignore_label=0", "dataset.ignore_label"),  # a train id: train ids start at 0
    ("dataset.class_colors=[[1, 2, 3]]", "dataset.class_colors"),
    ("dataset.label_map={10: 5}", r"dataset.label_map\[10\]"),
    ("model.num_classes=4", "model.num_classes"),
])
def test_inconsistent_descriptions_name_the_field(toy, override, field):
    with pytest.raises(ConfigError, match=f"override .*{field}"):
        load_config(toy["config"], [override])


def test_old_saved_model_and_loss_configs_keep_their_ignore_label():
    """A .keras config of an earlier version: ``ignore_label`` inside ``loss_config``, no dataset_config."""
    from gscnn_tf.losses import GSCNNLoss
    from gscnn_tf.model import GatedSCNN

    model = GatedSCNN.from_config({"model_config": {**TINY_MODEL, "num_classes": 5},
                                   "loss_config": {"edge_weight": 5.0, "ignore_label": 200}})
    assert model.dataset_config.ignore_label == 200 and model.loss_config.edge_weight == 5.0
    assert model.get_config()["dataset_config"]["ignore_label"] == 200
    # .keras files hold the config as JSON: label_map's keys come back as strings.
    assert GatedSCNN.from_config(json.loads(json.dumps(model.get_config()))).dataset_config == model.dataset_config
    loss = GSCNNLoss.from_config({"loss_config": {"ignore_label": 200}, "use_edge_terms": True})
    assert loss.ignore_label == 200 and loss.seg_loss.ignore_label == 200
    assert GSCNNLoss.from_config(loss.get_config()).ignore_label == 200


def test_training_miou_ignores_the_datasets_ignore_label(toy):
    from gscnn_tf.metrics.confusion import confusion_matrix, mean_iou
    from gscnn_tf.model import GatedSCNN

    model = GatedSCNN.from_yaml(toy["config"])
    model.compile()
    rng = np.random.default_rng(0)
    labels = rng.choice(np.array([0, 1, 2, 3, 4, 200]), (2, 8, 8))
    logits = rng.normal(size=(2, 8, 8, 5)).astype(np.float32)
    model._miou.update_state(labels, logits)
    expected = mean_iou(confusion_matrix(labels, logits.argmax(-1), 5, 200))
    np.testing.assert_allclose(float(model._miou.result()), expected, rtol=1e-6)


def _keys(tree):
    if isinstance(tree, dict):
        return set(tree) | set().union(*(_keys(v) for v in tree.values()))
    return set().union(*(_keys(v) for v in tree)) if isinstance(tree, list) else set()


def _colours(path):
    rgb = cv2.imread(path)[..., ::-1].reshape(-1, 3)
    return {tuple(int(c) for c in v) for v in np.unique(rgb, axis=0)}


@pytest.mark.slow
def test_train_evaluate_export_predict_use_only_the_datasets_names_colours_and_ids(toy, capsys):
    from gscnn_tf.cli import evaluate, export, predict, train

    cfg = load_config(toy["config"])
    run = cfg.train.model_dir
    assert train.main(["--config", toy["config"], "--quiet"]) == 0, capsys.readouterr().err

    out = str(toy["tmp"] / "eval")
    assert evaluate.main(["--checkpoint", run, "--out", out, "--save-predictions", "--distance-mode", "off",
                          "--quiet"]) == 0, capsys.readouterr().err
    report = json.load(open(os.path.join(out, "metrics.json")))
    assert list(report["iou_per_class"]) == DESCRIPTION["class_names"]
    assert list(report["iou_per_category"]) == ["first", "second"]
    assert not _keys(report) & CITYSCAPES_WORDS
    table_words = set(re.findall(r"^\| (\w+) \|", open(os.path.join(out, "metrics.md")).read(), re.M))
    assert not table_words & CITYSCAPES_WORDS and "alpha" in table_words
    saved = glob.glob(os.path.join(out, "predictions", "*_labelIds.png"))
    assert len(saved) == 2
    for path in saved:
        assert set(np.unique(cv2.imread(path, cv2.IMREAD_UNCHANGED)).tolist()) <= set(SOURCE_IDS)

    exported = str(toy["tmp"] / "export")
    assert export.main(["--checkpoint", run, "--export-dir", exported, "--no-warmup", "--quiet"]) == 0, \
        capsys.readouterr().err
    meta = json.load(open(os.path.join(exported, "1", "assets", "labels.json")))
    assert meta["class_names"] == DESCRIPTION["class_names"] and meta["ignore_label"] == 200
    assert meta["class_colors"] == DESCRIPTION["class_colors"] and meta["dataset_name"] == "toy"

    pred_dir = str(toy["tmp"] / "pred")
    image = os.path.join(toy["root"], "val", "images", "img0.png")
    assert predict.main(["--model", exported, "--input", image, "--output", pred_dir, "--label-ids",
                         "--quiet"]) == 0, capsys.readouterr().err
    allowed = {tuple(c) for c in DESCRIPTION["class_colors"]} | {(0, 0, 0)}
    colours = _colours(os.path.join(pred_dir, "img0_seg.png"))
    assert colours <= allowed and not colours & {tuple(c) for c in cityscapes.CLASS_COLORS.tolist()}
    ids = cv2.imread(os.path.join(pred_dir, "img0_labelIds.png"), cv2.IMREAD_UNCHANGED)
    assert set(np.unique(ids).tolist()) <= set(SOURCE_IDS)
