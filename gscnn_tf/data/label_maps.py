"""Label maps: raw label value -> train id, for Cityscapes and for user JSON/YAML maps.

A user map is a flat ``{raw value: train id}``, ``{"mapping": {...}, "class_names": [...]}``,
or a whole dataset description in the config's ``dataset:`` form (``name``, ``class_names``,
``class_colors``, ``ignore_label``, ``label_map``, ``categories``;
:class:`gscnn_tf.config.DatasetConfig`), so one file describes a dataset for the converter
and the experiment config alike.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from gscnn_tf.data import labels as _labels
from gscnn_tf.data.cityscapes import ConversionError


@dataclass
class LabelMapping:
    """Raw label value -> train id (256-entry LUT) and which raw values are known.

    ``unmapped="error"`` makes unknown raw values an error naming the file; ``"ignore"``
    maps them to 255.
    """

    lut: np.ndarray
    known: np.ndarray
    unmapped: str = "error"
    kind: str = "custom"
    ignore_label: int = _labels.IGNORE_LABEL
    class_names: Sequence[str] = field(default_factory=tuple)
    class_colors: Sequence[Sequence[int]] = field(default_factory=tuple)
    name: str = ""

    def describe(self) -> dict:
        """The manifest's ``label_mapping`` (``name`` and ``class_colors`` only when known)."""
        out = {
            "kind": self.kind,
            "ignore_label": self.ignore_label,
            "unmapped": self.unmapped,
            "class_names": list(self.class_names),
            "mapping": {str(i): int(self.lut[i]) for i in range(256) if self.known[i]},
        }
        if self.name:
            out["name"] = self.name
        if self.class_colors:
            out["class_colors"] = [list(map(int, c)) for c in self.class_colors]
        return out

    @property
    def train_ids(self) -> list:
        """The train ids a label may contain after mapping (including ignore)."""
        return sorted(set(int(v) for v in self.lut[self.known]) | {self.ignore_label})

    @property
    def accepted(self) -> np.ndarray:
        """Raw values that may appear in a label file (all of them with unmapped='ignore')."""
        return self.known if self.unmapped == "error" else np.ones(256, bool)


def cityscapes_mapping() -> LabelMapping:
    known = np.zeros(256, bool)
    known[list(_labels.VALID_LABEL_IDS)] = True
    return LabelMapping(lut=_labels.label_id_to_train_id_lut(), known=known, unmapped="error",
                        kind="cityscapes_label_id_to_train_id", class_names=_labels.CLASS_NAMES)


def load_label_map(path: str, unmapped: str = "error") -> LabelMapping:
    """Reads a JSON or YAML mapping ``{raw value: train id}`` (train ids 0..254 or 255 = ignore).

    The file may be a flat mapping, ``{"mapping": {...}, "class_names": [...]}``, a dataset
    description in the config's ``dataset:`` form (then its ``ignore_label`` is the ignore
    label, unmapped values included), or an experiment config (``configs/*.yaml``, ``base:``
    followed) whose ``dataset:`` section is that description.
    """
    if unmapped not in ("error", "ignore"):
        raise ConversionError(f"--unmapped must be 'error' or 'ignore', got {unmapped!r}")
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ConversionError(f"{path}: cannot read label map ({e.strerror})") from None
    try:
        if path.lower().endswith((".yaml", ".yml")):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as e:
        raise ConversionError(f"{path}: cannot parse label map ({e})") from None
    if isinstance(data, dict) and "label_map" not in data and ("dataset" in data or "base" in data):
        data = _experiment_dataset_section(path)
    if isinstance(data, dict) and "label_map" in data:
        return _dataset_mapping(path, data, unmapped)
    names = ()
    if isinstance(data, dict) and "mapping" in data:
        names = tuple(data.get("class_names") or ())
        data = data["mapping"]
    if not isinstance(data, dict) or not data:
        raise ConversionError(f"{path}: label map must be a non-empty mapping raw value -> train id")
    lut = np.full(256, _labels.IGNORE_LABEL, np.uint8)
    known = np.zeros(256, bool)
    for k, v in data.items():
        try:
            raw, tid = int(k), int(v)
        except (TypeError, ValueError):
            raise ConversionError(f"{path}: entry {k!r}: {v!r} is not an integer pair") from None
        if not 0 <= raw <= 255 or not 0 <= tid <= 255:
            raise ConversionError(f"{path}: entry {raw}: {tid} out of range 0..255")
        lut[raw], known[raw] = tid, True
    return LabelMapping(lut=lut, known=known, unmapped=unmapped, kind="custom", class_names=names)


def _experiment_dataset_section(path: str) -> dict:
    """The ``dataset:`` section of the experiment config at ``path`` (its ``base:`` chain
    merged, as training reads it)."""
    from gscnn_tf.config import ConfigError, config_to_dict, load_config

    try:
        data = config_to_dict(load_config(path))["dataset"]
    except ConfigError as e:
        raise ConversionError(f"{path}: {e}") from None
    return data


def _dataset_mapping(path: str, data: dict, unmapped: str) -> LabelMapping:
    """A :class:`LabelMapping` from a file in the config's ``dataset:`` form (checked as the
    config checks it; errors name ``path``)."""
    from gscnn_tf.config import ConfigError, config_from_dict

    try:
        ds = config_from_dict({"dataset": data}, check_num_classes=False).dataset
    except ConfigError as e:
        raise ConversionError(f"{path}: {e}") from None
    lut = np.full(256, ds.ignore_label, np.uint8)
    known = np.zeros(256, bool)
    for raw, train_id in ds.label_map.items():
        lut[raw], known[raw] = train_id, True
    return LabelMapping(lut=lut, known=known, unmapped=unmapped, kind="dataset", ignore_label=ds.ignore_label,
                        class_names=tuple(ds.class_names), class_colors=tuple(map(tuple, ds.class_colors)),
                        name=ds.name)
