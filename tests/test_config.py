import os

import pytest

from gscnn_tf.config import ConfigError, ExperimentConfig, load_config, save_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_defaults_are_the_paper_recipe():
    cfg = ExperimentConfig()
    assert (cfg.loss.edge_weight, cfg.loss.seg_weight, cfg.loss.dual_task_weight, cfg.loss.attention_weight) == (20, 1, 1, 1)
    assert cfg.loss.attention_threshold == 0.8
    assert cfg.train.learning_rate == 0.01 and cfg.train.momentum == 0.9 and cfg.train.weight_decay == 1e-4


def test_yaml_base_and_overrides(tmp_path):
    (tmp_path / "base.yaml").write_text("model: {backbone: resnet101}\ntrain: {batch_size: 8, epochs: 3}\n")
    (tmp_path / "child.yaml").write_text("base: base.yaml\ntrain: {epochs: 5}\n")
    cfg = load_config(str(tmp_path / "child.yaml"), ["train.batch_size=2", "data.crop_size=[64, 96]", "model.pretrained=null"])
    assert cfg.model.backbone == "resnet101"
    assert (cfg.train.batch_size, cfg.train.epochs) == (2, 5)
    assert cfg.data.crop_size == [64, 96]
    assert cfg.model.pretrained is None


def test_int_is_accepted_for_float_and_saved_config_round_trips(tmp_path):
    cfg = load_config(None, ["train.learning_rate=1"])
    assert isinstance(cfg.train.learning_rate, float)
    save_config(cfg, str(tmp_path / "run" / "config.yaml"))
    assert load_config(str(tmp_path / "run" / "config.yaml")) == cfg
    assert not [p for p in (tmp_path / "run").iterdir() if p.name.startswith(".")]  # no temp file left


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.batchsize=4", "unknown key"),
        ("train.batch_size=four", "expected an integer"),
        ("model.shape_stream=1", "expected true/false"),
        ("train.batch_size", "KEY.PATH=VALUE"),
    ],
)
def test_bad_overrides_are_named(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(str(tmp_path / "nope.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_config(str(bad))


@pytest.mark.parametrize(
    "yaml_text, field, message",
    [
        ('train: {backup_save_freq: "500"}', "train.backup_save_freq", "expected an integer or 'epoch', got '500'"),
        ("train: {backup_save_freq: 0}", "train.backup_save_freq", "'epoch' or a number of steps >= 1"),
        ("train: {jit_compile: sometimes}", "train.jit_compile", "expected true/false or 'auto'"),
        ("data: {crop_size: [64, 64.5]}", r"data.crop_size\[1\]", "expected an integer"),
        ("data: {min_scale: 2.0, max_scale: 1.0}", "data.min_scale/max_scale", "min_scale <= max_scale"),
        ("eval: {scales: []}", "eval.scales", "non-empty"),
        ("dataset: {ignore_label: 300}", "dataset.ignore_label", "0..255"),
        ("data: {pad_color: grey}", "data.pad_color", "expected 'black' or 'mean' or a list"),
        ("data: {pad_color: [0, 300, 0]}", "data.pad_color", r"\[r, g, b\] in 0..255"),
        ("data: {pad_color: [0, 0]}", "data.pad_color", r"\[r, g, b\] in 0..255"),
    ],
)
def test_bad_values_in_a_file_name_the_file_and_the_field(tmp_path, yaml_text, field, message):
    path = tmp_path / "exp.yaml"
    path.write_text(yaml_text + "\n")
    with pytest.raises(ConfigError, match=f"exp.yaml: {field}: .*{message}"):
        load_config(str(path))


def test_typed_fields_keep_their_accepted_forms():
    cfg = load_config(None, ["train.backup_save_freq=500", "train.jit_compile=false", "model.sync_batchnorm=auto",
                             "eval.boundary_tolerances_px=[2, 4.5]"])
    assert cfg.train.backup_save_freq == 500 and cfg.train.jit_compile is False
    assert cfg.model.sync_batchnorm == "auto" and cfg.eval.boundary_tolerances_px == [2, 4.5]
    with pytest.raises(ConfigError, match="override 'train.epochs=0': train.epochs: must be >= 1"):
        load_config(None, ["train.epochs=0"])


def test_official_config_fine_tunes_into_its_own_directory_from_the_import():
    """Trap: the recipe used to train in the directory the import had just written, so training was
    refused and the suggested --fresh deleted the imported weights."""
    cfg = load_config(os.path.join(REPO, "configs", "cityscapes_wrn38_official.yaml"))
    source, target = os.path.normpath(cfg.train.init_checkpoint), os.path.normpath(cfg.train.model_dir)
    assert source == os.path.normpath("runs/gscnn_wrn38_official")  # import_official_checkpoint.py's --out in the docs
    assert os.path.commonpath([source, target]) not in (source, target)  # neither inside the other


def test_legacy_ignore_labels_move_to_the_dataset_section(tmp_path):
    """config.yaml files of earlier versions set loss.ignore_label and data.ignore_label."""
    old = tmp_path / "config.yaml"
    old.write_text("model: {num_classes: 19}\nloss: {edge_weight: 20.0, ignore_label: 254}\n"
                   "data: {crop_size: [64, 64], ignore_label: 254}\n")
    cfg = load_config(str(old))
    assert cfg.dataset.ignore_label == 254 and cfg.data.crop_size == [64, 64]
    assert cfg.dataset.label_map[0] == 254 and cfg.dataset.label_map[7] == 0  # Cityscapes' voids follow it
    assert not hasattr(cfg.loss, "ignore_label") and not hasattr(cfg.data, "ignore_label")
    saved = tmp_path / "saved.yaml"
    save_config(cfg, str(saved))
    assert load_config(str(saved)) == cfg
    old.write_text("loss: {ignore_label: 255}\ndata: {ignore_label: 254}\n")
    with pytest.raises(ConfigError, match="config.yaml: loss.ignore_label and data.ignore_label disagree"):
        load_config(str(old))


def test_default_dataset_is_cityscapes():
    from gscnn_tf.data import labels

    ds = ExperimentConfig().dataset
    assert ds.name == "cityscapes" and tuple(ds.class_names) == labels.CLASS_NAMES and ds.ignore_label == 255
    assert ds.class_colors == labels.CLASS_COLORS.tolist() and len(set(ds.categories)) == 7
    assert (ds.source_id_lut() == labels.train_id_to_label_id_lut()).all()


def test_a_dataset_with_its_own_classes_does_not_inherit_cityscapes_map_or_categories(tmp_path):
    (tmp_path / "mine.yaml").write_text("model: {num_classes: 2}\n"
                                        "dataset: {class_names: [road, car], class_colors: [[1, 2, 3], [4, 5, 6]]}\n")
    cfg = load_config(str(tmp_path / "mine.yaml"))
    assert (cfg.dataset.name, cfg.dataset.categories, cfg.dataset.label_map) == ("custom", [], {0: 0, 1: 1})
    assert load_config(None).dataset.categories[0] == "flat"  # Cityscapes keeps its own
