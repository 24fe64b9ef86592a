"""Typed experiment configuration: dataclasses loaded from YAML, overridable from the CLI.

Modelled on TF Model Garden's configs: one dataclass per concern, nested in
``ExperimentConfig``. YAML files under ``configs/`` hold only the fields that differ
from the defaults below. Overrides use dotted paths::

    cfg = load_config("configs/cpu_demo.yaml", overrides=["train.batch_size=4",
                                                          "model.backbone=resnet50"])

Unknown keys are errors (a typo must not silently train the wrong model), and so are
values of the wrong type or out of range: every field is typed, :func:`load_config`
checks each value against its type (``int`` where an integer is meant, ``"epoch"`` or an
integer for ``train.backup_save_freq``, ...) and the ranges in :func:`validate_config`,
and the error names the field and the file (or the ``--set`` override) it came from.
"""
from __future__ import annotations

import dataclasses
import os
import typing
from dataclasses import dataclass, field
from typing import Any, Dict, List, Literal, Optional, Union

import yaml

from gscnn_tf.data import labels as _labels
from gscnn_tf.deploy.tiles import DEFAULT_TILE_OVERLAP
from gscnn_tf.utils.atomic import atomic_write_text


class ConfigError(ValueError):
    """A config file or override is malformed (unknown key, wrong type, bad value)."""


@dataclass
class ModelConfig:
    """The network: regular stream, shape stream and fusion (docs/PAPER.md section 1)."""

    backbone: str = "resnet50"  # resnet50 | resnet101 | mobilenetv2 | wrn38 (output stride 8 only)
    output_stride: int = 8  # 8 (paper) or 16
    pretrained: Optional[str] = None  # None | "imagenet" | path to a Keras weights file
    num_classes: int = 19
    mobilenet_alpha: float = 1.0  # width multiplier of the MobileNetV2 backbone
    # Ablations (paper Table 4): shape_stream=False is the DeepLabV3+ baseline.
    shape_stream: bool = True
    gated: bool = True  # False: shape stream without GCL gates
    canny: bool = True  # False: no image-gradient input to the fusion
    canny_low: float = 10.0  # official code: cv2.Canny(img, 10, 100)
    canny_high: float = 100.0
    aspp_filters: int = 256
    decoder_filters: int = 256
    low_level_filters: int = 48
    # "auto": synchronized BatchNorm when a tf.distribute strategy is active at build time.
    sync_batchnorm: Union[bool, Literal["auto"]] = "auto"  # "auto" | True | False
    # True: reproduce the official PyTorch inference where it differs from the paper-faithful
    # defaults (align-corners resizes, wrapped-uint8 Canny input, plain 1x1 ASPP projection and
    # low-level branch, no classifier bias), for weights imported from the official checkpoint.
    official_compat: bool = False


@dataclass
class LossConfig:
    """Loss weights and hyper-parameters (paper section 3.3-3.4)."""

    edge_weight: float = 20.0  # lambda_1, class-balanced edge BCE
    seg_weight: float = 1.0  # lambda_2, segmentation cross-entropy
    dual_task_weight: float = 1.0  # lambda_3, L_reg-> (boundary consistency)
    attention_weight: float = 1.0  # lambda_4, L_reg<- (CE on confident edge pixels)
    attention_threshold: float = 0.8
    gumbel_tau: float = 1.0  # paper: 1.0; official code: 0.5
    gumbel_noise: bool = True  # False: deterministic straight-through softmax (tests, ablations)
    dual_task_sigma: float = 1.0  # Gaussian smoothing before the spatial gradient
    boundary_radius: float = 2.0  # GT boundary: pixels within this distance of a class border


@dataclass
class DataConfig:
    """Where the data comes from and how it is augmented (docs/PAPER.md sections 4 and 6)."""

    source: str = "tfrecord"  # tfrecord | tfds
    train_pattern: str = ""  # glob of training shards, e.g. data/tfrecords/train_fine-*.tfrecord
    val_pattern: str = ""
    test_pattern: str = ""  # evaluated only on request (evaluate.py --split test)
    tfds_name: str = "cityscapes/semantic_segmentation"
    tfds_data_dir: Optional[str] = None
    tfds_manual_dir: Optional[str] = None
    crop_size: List[int] = field(default_factory=lambda: [800, 800])  # [height, width]
    min_scale: float = 0.5
    max_scale: float = 2.0
    hflip: bool = True
    color_jitter: float = 0.25
    blur_prob: float = 0.5
    # Colour of the image where a crop is padded (its labels are ignored): "black" (the
    # official code), "mean" (the backbone's mean colour, 0 after normalisation) or [r, g, b].
    pad_color: Union[Literal["black", "mean"], List[float]] = "black"
    shuffle_buffer: int = 512
    deterministic: bool = False
    # Evaluation images are used at full size unless eval_scale != 1 (e.g. 0.5 for quick checks).
    eval_scale: float = 1.0


@dataclass
class DatasetConfig:
    """What the labels mean (defaults: Cityscapes, from :mod:`gscnn_tf.data.labels`).

    Train ids are 0..K-1 (K = ``len(class_names)`` = ``model.num_classes``) plus
    ``ignore_label`` for unlabelled pixels. ``label_map`` maps the dataset's source label
    values (the PNGs' pixel values) to train ids; its inverse writes predictions back as
    source ids. ``categories``: each class's category name (empty: no category mIoU). The
    converter's ``--label-map`` file may hold this same mapping.
    """

    name: str = "cityscapes"
    class_names: List[str] = field(default_factory=lambda: list(_labels.CLASS_NAMES))
    class_colors: List[List[int]] = field(default_factory=lambda: _labels.CLASS_COLORS.tolist())  # RGB 0..255
    ignore_label: int = _labels.IGNORE_LABEL
    label_map: Dict[int, int] = field(default_factory=_labels.label_map)  # source value -> train id
    categories: List[str] = field(default_factory=lambda: list(_labels.CLASS_CATEGORIES))

    def source_id_lut(self):
        """256-entry uint8 table train id -> source label value (inverse of ``label_map``)."""
        return _labels.source_id_lut(self.label_map, self.ignore_label)


@dataclass
class TrainConfig:
    """Optimisation and the run (docs/PAPER.md section 4)."""

    model_dir: str = "runs/experiment"
    batch_size: int = 16  # global batch size, split across replicas
    epochs: int = 175
    steps_per_epoch: Optional[int] = None  # None: one pass over the training set
    validation_steps: Optional[int] = None
    validation_freq: int = 1
    optimizer: str = "sgd"
    learning_rate: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    poly_power: float = 1.0  # lr = base * (1 - step / total) ** power, per step
    strategy: str = "default"  # default | mirrored | multi_worker
    num_cpu_devices: int = 0  # >0: split the CPU into N logical devices (tests, no GPU)
    mixed_precision: bool = False
    jit_compile: Union[bool, Literal["auto"]] = "auto"  # "auto" | True | False
    seed: Optional[int] = 0
    backup_save_freq: Union[int, Literal["epoch"]] = "epoch"  # "epoch" or a number of steps
    image_summaries: int = 2  # images written to TensorBoard per validation
    init_checkpoint: Optional[str] = None  # fine-tune from these weights


@dataclass
class EvalConfig:
    """The paper's metrics (docs/PAPER.md section 5)."""

    boundary_tolerances_px: List[float] = field(default_factory=lambda: [3, 5, 9, 12])
    # Boundary tolerances are given at this reference resolution and scaled with the
    # image diagonal, so a 512x1024 evaluation uses the paper's relative slack.
    boundary_reference_size: List[int] = field(default_factory=lambda: [1024, 2048])
    scales: List[float] = field(default_factory=lambda: [1.0])
    flip: bool = False
    distance_crop_fractions: List[float] = field(default_factory=lambda: [1.0, 0.75, 0.5, 0.25])
    official_eval: bool = False
    # Sliding-window inference (gscnn_tf.evaluation.tiled): null runs the network on the whole
    # (scaled) image at once; [height, width] (multiples of 8) runs it on tiles of that size,
    # one at a time, blending their softmax over tile_overlap pixels (in [0, min(tile_size))).
    tile_size: Optional[List[int]] = None
    tile_overlap: int = DEFAULT_TILE_OVERLAP


@dataclass
class ExperimentConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    data: DataConfig = field(default_factory=DataConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


# ----------------------------------------------------------------------------- loading


def _describe(annotation: Any) -> str:
    """What a value of ``annotation`` looks like, for error messages."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Union:
        return " or ".join(_describe(a) for a in args)
    if origin is Literal:
        return " or ".join(repr(a) for a in args)
    if origin is list:
        return f"a list of {_describe(args[0]) if args else 'values'}"
    if origin is dict:
        return f"a mapping {_describe(args[0])} -> {_describe(args[1])}"
    return {bool: "true/false", int: "an integer", float: "a number", str: "a string",
            type(None): "null"}.get(annotation, str(annotation))


def _coerce(value: Any, annotation: Any, where: str, in_list: bool = False) -> Any:
    """Checks ``value`` against a field annotation; ints are accepted for floats.

    Scalar floats are stored as floats; list elements keep the YAML's int or float.
    """
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Union:  # Optional[X], Union[bool, Literal["auto"]], ...
        if value is None and type(None) in args:
            return None
        for option in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, option, where, in_list)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: expected {_describe(annotation)}, got {value!r}")
    if origin is Literal:
        if isinstance(value, bool) or value not in args:
            raise ConfigError(f"{where}: expected {_describe(annotation)}, got {value!r}")
        return value
    if annotation is list or origin is list:
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected {_describe(annotation)}, got {value!r}")
        if not args:
            return value
        return [_coerce(v, args[0], f"{where}[{i}]", in_list=True) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected {_describe(annotation)}, got {value!r}")
        return {_coerce(_int_key(k), args[0], f"{where} key {k!r}"): _coerce(v, args[1], f"{where}[{k!r}]")
                for k, v in value.items()}
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return value if in_list else float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    raise TypeError(f"{where}: config field type {annotation!r} has no check; add one to _coerce")


def _int_key(key: Any) -> Any:
    """A mapping key as written by JSON (``"7"``) back to an int; other keys unchanged."""
    return int(key) if isinstance(key, str) and key.strip().lstrip("-").isdigit() else key


def _from_dict(cls: type, data: dict, where: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(
            f"{where or 'config'}: unknown key(s) {unknown}; known: {sorted(known)}"
        )
    kwargs = {}
    for name, value in data.items():
        path = f"{where}.{name}" if where else name
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _from_dict(hint, value or {}, path)
        else:
            kwargs[name] = _coerce(value, hint, path)
    return cls(**kwargs)


def _merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_override(text: str) -> dict:
    """``"train.batch_size=4"`` -> ``{"train": {"batch_size": 4}}`` (value parsed as YAML)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected KEY.PATH=VALUE")
    key, raw = text.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"override {text!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""  # "key=" is the empty string; "key=null" is None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({exc})") from exc
    nested: dict = value
    for part in reversed(parts):
        nested = {part: nested}
    return nested


def _move_legacy_ignore_label(data: dict) -> dict:
    """Config files of earlier versions set ``loss.ignore_label`` and ``data.ignore_label``:
    both move to ``dataset.ignore_label``; they must agree with each other and with it."""
    found = {}
    data = dict(data)
    for section in ("loss", "data"):
        if isinstance(data.get(section), dict) and "ignore_label" in data[section]:
            data[section] = dict(data[section])
            found[f"{section}.ignore_label"] = data[section].pop("ignore_label")
    if not found:
        return data
    dataset = dict(data.get("dataset") or {})
    if "ignore_label" in dataset:
        found["dataset.ignore_label"] = dataset["ignore_label"]
    if len(set(map(repr, found.values()))) > 1:
        raise ConfigError(f"{' and '.join(found)} disagree ({found}); the ignore label is dataset.ignore_label")
    dataset["ignore_label"] = ignore = next(iter(found.values()))
    if "label_map" not in dataset and ignore != _labels.IGNORE_LABEL:  # Cityscapes' map, voids to this label
        dataset["label_map"] = {s: ignore if t == _labels.IGNORE_LABEL else t for s, t in _labels.label_map().items()}
    data["dataset"] = dataset
    return data


def _other_dataset_defaults(data: dict) -> dict:
    """A ``dataset:`` section whose ``class_names`` are not Cityscapes' describes another dataset:
    Cityscapes' name, categories and label-id map do not apply to it. Unless it sets them, its
    name is "custom", it has no categories and its label values are its train ids."""
    dataset = data.get("dataset")
    if not isinstance(dataset, dict) or "class_names" not in dataset:
        return data
    if list(dataset["class_names"] or []) == list(_labels.CLASS_NAMES):
        return data
    dataset = dict(dataset)
    dataset.setdefault("name", "custom")
    dataset.setdefault("categories", [])
    dataset.setdefault("label_map", {i: i for i in range(len(dataset["class_names"] or []))})
    return {**data, "dataset": dataset}


def _check(ok: bool, where: str, requirement: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"{where}: must be {requirement}, got {value!r}")


def _validate_dataset(ds: DatasetConfig) -> None:
    """The dataset description is consistent in itself (K = ``len(class_names)`` classes)."""
    k, ignore = len(ds.class_names), ds.ignore_label
    _check(k >= 1, "dataset.class_names", "a non-empty list", ds.class_names)
    _check(0 <= ignore <= 255, "dataset.ignore_label", "in 0..255 (labels are 8-bit PNGs)", ignore)
    _check(ignore >= k, "dataset.ignore_label", f"not a train id (>= {k}, the number of classes)", ignore)
    _check(len(ds.class_colors) == k, "dataset.class_colors", f"one colour per class ({k})", ds.class_colors)
    for i, rgb in enumerate(ds.class_colors):
        _check(len(rgb) == 3 and all(0 <= c <= 255 for c in rgb), f"dataset.class_colors[{i}]",
               "[r, g, b] in 0..255", rgb)
    _check(not ds.categories or len(ds.categories) == k, "dataset.categories",
           f"empty or one category per class ({k})", ds.categories)
    for source, train_id in ds.label_map.items():
        _check(0 <= source <= 255, f"dataset.label_map[{source}]", "a source value in 0..255", source)
        _check(0 <= train_id < k or train_id == ignore, f"dataset.label_map[{source}]",
               f"a train id in 0..{k - 1} or the ignore label {ignore}", train_id)


def validate_config(cfg: ExperimentConfig, check_num_classes: bool = True) -> ExperimentConfig:
    """Range checks that types cannot express; raises :class:`ConfigError` naming the field.

    ``check_num_classes=False`` skips the check that the dataset has ``model.num_classes``
    classes (for a model built from some of the sections).
    """
    m, d, t, e = cfg.model, cfg.data, cfg.train, cfg.eval
    _check(m.num_classes >= 1, "model.num_classes", ">= 1", m.num_classes)
    _check(m.mobilenet_alpha > 0, "model.mobilenet_alpha", "> 0", m.mobilenet_alpha)
    _validate_dataset(cfg.dataset)
    if check_num_classes:
        _check(len(cfg.dataset.class_names) == m.num_classes, "model.num_classes",
               f"the number of dataset.class_names ({len(cfg.dataset.class_names)})", m.num_classes)
    _check(len(d.crop_size) == 2 and min(d.crop_size) >= 1, "data.crop_size", "[height, width], both >= 1",
           d.crop_size)
    _check(0 < d.min_scale <= d.max_scale, "data.min_scale/max_scale", "0 < min_scale <= max_scale",
           [d.min_scale, d.max_scale])
    _check(0 <= d.blur_prob <= 1, "data.blur_prob", "in [0, 1]", d.blur_prob)
    _check(d.color_jitter >= 0, "data.color_jitter", ">= 0", d.color_jitter)
    _check(d.shuffle_buffer >= 0, "data.shuffle_buffer", ">= 0", d.shuffle_buffer)
    _check(d.eval_scale > 0, "data.eval_scale", "> 0", d.eval_scale)
    _check(isinstance(d.pad_color, str) or (len(d.pad_color) == 3 and all(0 <= c <= 255 for c in d.pad_color)),
           "data.pad_color", '"black", "mean" or [r, g, b] in 0..255', d.pad_color)
    for name in ("batch_size", "epochs", "validation_freq"):
        _check(getattr(t, name) >= 1, f"train.{name}", ">= 1", getattr(t, name))
    for name in ("steps_per_epoch", "validation_steps"):
        value = getattr(t, name)
        _check(value is None or value >= 1, f"train.{name}", "null or >= 1", value)
    _check(t.backup_save_freq == "epoch" or t.backup_save_freq >= 1, "train.backup_save_freq",
           "'epoch' or a number of steps >= 1", t.backup_save_freq)
    _check(t.learning_rate > 0, "train.learning_rate", "> 0", t.learning_rate)
    _check(t.num_cpu_devices >= 0, "train.num_cpu_devices", ">= 0", t.num_cpu_devices)
    _check(t.image_summaries >= 0, "train.image_summaries", ">= 0", t.image_summaries)
    _check(bool(e.scales) and min(e.scales) > 0, "eval.scales", "a non-empty list of positive scales", e.scales)
    _check(len(e.boundary_reference_size) == 2 and min(e.boundary_reference_size) >= 1,
           "eval.boundary_reference_size", "[height, width], both >= 1", e.boundary_reference_size)
    _check(all(v > 0 for v in e.boundary_tolerances_px), "eval.boundary_tolerances_px", "positive",
           e.boundary_tolerances_px)
    _check(all(0 < v <= 1 for v in e.distance_crop_fractions), "eval.distance_crop_fractions", "in (0, 1]",
           e.distance_crop_fractions)
    _check(e.tile_size is None or (len(e.tile_size) == 2 and min(e.tile_size) >= 8 and all(v % 8 == 0 for v in
           e.tile_size)), "eval.tile_size", "null or [height, width], positive multiples of 8", e.tile_size)
    _check(e.tile_overlap >= 0 and (e.tile_size is None or e.tile_overlap < min(e.tile_size)), "eval.tile_overlap",
           ">= 0 and smaller than both sides of eval.tile_size", e.tile_overlap)
    return cfg


def config_from_dict(data: dict, check_num_classes: bool = True) -> ExperimentConfig:
    """An :class:`ExperimentConfig` from nested dicts, type- and range-checked (legacy
    ``loss.ignore_label`` / ``data.ignore_label`` move to ``dataset.ignore_label``)."""
    if not isinstance(data, dict):
        raise ConfigError(f"config: expected a mapping, got {data!r}")
    data = _other_dataset_defaults(_move_legacy_ignore_label(data))
    return validate_config(_from_dict(ExperimentConfig, data, ""), check_num_classes)


def load_config(path: Optional[str] = None, overrides: Optional[list] = None) -> ExperimentConfig:
    """Loads a YAML experiment config (defaults where a key is absent) and applies overrides.

    A YAML file may name another with ``base: other.yaml`` (relative to itself); the
    file's own keys win over the base's.
    """
    def checked(data: dict, source: Optional[str]) -> ExperimentConfig:
        # Each step is checked as it is applied, so an error names the file or override at fault.
        try:
            return config_from_dict(data)
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}" if source else str(exc)) from None

    data = _load_yaml_with_base(path, seen=()) if path else {}
    cfg = checked(data, path)
    for text in overrides or []:
        data = _merge(data, parse_override(text))
        cfg = checked(data, f"override {text!r}")
    return cfg


def _load_yaml_with_base(path: str, seen: tuple) -> dict:
    if not os.path.isfile(path):
        raise ConfigError(f"{path}: config file not found")
    if os.path.abspath(path) in seen:
        raise ConfigError(f"{path}: 'base' chain loops")
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    base = data.pop("base", None)
    if base:
        base_path = os.path.join(os.path.dirname(os.path.abspath(path)), base)
        data = _merge(_load_yaml_with_base(base_path, seen + (os.path.abspath(path),)), data)
    return data


def config_to_dict(cfg: ExperimentConfig) -> dict:
    return dataclasses.asdict(cfg)


def save_config(cfg: ExperimentConfig, path: str) -> None:
    """Writes the fully resolved config as YAML (atomically), so a run can be reproduced."""
    atomic_write_text(path, yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
