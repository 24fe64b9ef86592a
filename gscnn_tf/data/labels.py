"""Cityscapes label tables: label ids -> train ids, class names, colours, categories.

Single source of truth, derived from ``cityscapesscripts.helpers.labels``: the 19 train
classes (train ids 0..18), ``IGNORE_LABEL`` = 255 for everything else. The Cityscapes
``*_labelIds.png`` files hold label ids 0..33; the license plate (id -1) never appears
in them. Any other value is not a Cityscapes label id and is reported as an error by
the converters.
"""
from __future__ import annotations

import numpy as np
from cityscapesscripts.helpers import labels as _cs

IGNORE_LABEL = 255
NUM_CLASSES = 19

_TRAIN = sorted((l for l in _cs.labels if 0 <= l.trainId < IGNORE_LABEL), key=lambda l: l.trainId)
CLASS_NAMES: tuple = tuple(l.name for l in _TRAIN)
# RGB colours of the train classes, as in Cityscapes' *_color.png files.
CLASS_COLORS: np.ndarray = np.array([l.color for l in _TRAIN], dtype=np.uint8)
# Category of each train class (flat, construction, object, nature, sky, human, vehicle).
CATEGORY_NAMES: tuple = ("flat", "construction", "object", "nature", "sky", "human", "vehicle")
CLASS_TO_CATEGORY: np.ndarray = np.array([l.categoryId - 1 for l in _TRAIN], dtype=np.int32)

# Category name of each train class, in train-id order (the dataset description's ``categories``).
CLASS_CATEGORIES: tuple = tuple(CATEGORY_NAMES[c] for c in CLASS_TO_CATEGORY)

# Label ids present in *_labelIds.png files (0..33); the license plate (-1) is excluded.
VALID_LABEL_IDS: tuple = tuple(sorted(l.id for l in _cs.labels if l.id >= 0))


def label_id_to_train_id_lut() -> np.ndarray:
    """256-entry uint8 lookup table; ids that are not Cityscapes label ids map to 255 too.

    Use :func:`invalid_label_ids` to detect such ids before mapping.
    """
    lut = np.full(256, IGNORE_LABEL, dtype=np.uint8)
    for l in _cs.labels:
        if l.id >= 0:
            lut[l.id] = IGNORE_LABEL if l.trainId < 0 else l.trainId
    return lut


def label_map() -> dict:
    """Cityscapes label id -> train id (ignore = 255) for every id in ``*_labelIds.png`` files."""
    lut = label_id_to_train_id_lut()
    return {int(i): int(lut[i]) for i in VALID_LABEL_IDS}


def train_id_to_label_id_lut() -> np.ndarray:
    """256-entry uint8 table for writing official-evaluation PNGs (ignore -> 0 'unlabeled')."""
    return source_id_lut(label_map(), IGNORE_LABEL)


def source_id_lut(mapping: dict, ignore_label: int) -> np.ndarray:
    """256-entry uint8 table train id -> source label value, the inverse of ``mapping``.

    ``mapping`` is {source value: train id}; a train id several source values map to gets the
    smallest of them; ``ignore_label`` and unmapped train ids get the smallest source value
    mapped to ``ignore_label`` (0 when none is).
    """
    lut = np.zeros(256, dtype=np.uint8)
    inverse: dict = {}
    for source, train_id in sorted((int(k), int(v)) for k, v in mapping.items()):
        inverse.setdefault(train_id, source)
    lut[:] = inverse.get(int(ignore_label), 0)
    for train_id, source in inverse.items():
        if train_id != ignore_label:
            lut[train_id] = source
    return lut


def invalid_label_ids(label_ids: np.ndarray) -> list:
    """The values in a label-id map that are not Cityscapes label ids (sorted)."""
    values = np.unique(label_ids)
    valid = np.zeros(256, dtype=bool)
    valid[list(VALID_LABEL_IDS)] = True
    return [int(v) for v in values if v > 255 or v < 0 or not valid[v]]


def label_ids_to_train_ids(label_ids: np.ndarray) -> np.ndarray:
    return label_id_to_train_id_lut()[label_ids]


def colorize(train_ids: np.ndarray, colors=None) -> np.ndarray:
    """(H, W) train ids -> (H, W, 3) uint8 RGB with ``colors`` ((K, 3) RGB 0..255; None:
    Cityscapes'); ignore (and anything >= K) is black."""
    colors = CLASS_COLORS if colors is None else np.asarray(colors, dtype=np.uint8).reshape(-1, 3)
    palette = np.zeros((256, 3), dtype=np.uint8)
    palette[: len(colors)] = colors
    return palette[np.asarray(train_ids, dtype=np.uint8)]
