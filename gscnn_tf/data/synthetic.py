"""Procedural street scenes in the exact Cityscapes layout and label ids.

``generate_synthetic_cityscapes(root, ...)`` writes

* ``leftImg8bit/{split}/{city}/{city}_{seq:06d}_{frame:06d}_leftImg8bit.png`` (RGB, 8 bit),
* ``gtFine/{split}/{city}/{city}_{seq:06d}_{frame:06d}_gtFine_labelIds.png`` (label ids 0..33),
* ``..._gtFine_instanceIds.png`` (16 bit; ``id * 1000 + k`` for cars and people) and
* ``..._gtFine_color.png`` (Cityscapes label colours),

so the converter and every other tool can be exercised without the real dataset.
Each scene (:func:`gscnn_tf.data.scene.render_scene`) is a perspective street with
roads, sidewalks, buildings, vegetation, cars, people, poles, signs and lights, with
per-object colour variation, shading and noise: learnable by a tiny CNN in minutes, but
not by a per-pixel lookup alone.

As in Cityscapes, the test split's label files exist but carry no labels (all 0,
"unlabeled").

Everything is drawn from ``numpy.random.default_rng(SeedSequence([seed, split, index]))``,
so the same seed gives byte-identical files regardless of the other splits' counts.
"""
from __future__ import annotations

import logging
import os

import cv2
import numpy as np
from cityscapesscripts.helpers import labels as _cs

from gscnn_tf.data.scene import Scene, render_scene
from gscnn_tf.utils.atomic import atomic_write_bytes

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
CITIES = {"train": ("aachen", "bremen"), "val": ("frankfurt", "lindau"), "test": ("berlin", "bonn")}
FRAME = 19  # Cityscapes' annotated frame is the 20th of each snippet

_LABEL_COLORS = np.zeros((256, 3), np.uint8)
for _l in _cs.labels:
    if _l.id >= 0:
        _LABEL_COLORS[_l.id] = _l.color


def image_name(city: str, seq: int, frame: int = FRAME) -> str:
    return f"{city}_{seq:06d}_{frame:06d}"


def _png(array: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", array, [cv2.IMWRITE_PNG_COMPRESSION, 3])
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()


def write_sample(root: str, split: str, city: str, seq: int, scene: Scene, labeled: bool = True) -> dict:
    """Writes one image and its gtFine files (atomically); returns their paths."""
    name = image_name(city, seq)
    img_path = os.path.join(root, "leftImg8bit", split, city, f"{name}_leftImg8bit.png")
    gt_dir = os.path.join(root, "gtFine", split, city)
    lab = scene.label_ids if labeled else np.zeros_like(scene.label_ids)
    inst = scene.instance_ids if labeled else np.zeros_like(scene.instance_ids)
    paths = {
        "image": img_path,
        "labelIds": os.path.join(gt_dir, f"{name}_gtFine_labelIds.png"),
        "instanceIds": os.path.join(gt_dir, f"{name}_gtFine_instanceIds.png"),
        "color": os.path.join(gt_dir, f"{name}_gtFine_color.png"),
    }
    atomic_write_bytes(paths["image"], _png(cv2.cvtColor(scene.image, cv2.COLOR_RGB2BGR)))
    atomic_write_bytes(paths["labelIds"], _png(lab))
    atomic_write_bytes(paths["instanceIds"], _png(inst.astype(np.uint16)))
    atomic_write_bytes(paths["color"], _png(cv2.cvtColor(_LABEL_COLORS[lab], cv2.COLOR_RGB2BGR)))
    return paths


def generate_synthetic_cityscapes(
    root: str,
    num_train: int = 20,
    num_val: int = 6,
    num_test: int = 0,
    height: int = 256,
    width: int = 512,
    seed: int = 0,
    progress: bool = False,
) -> dict:
    """Writes a synthetic dataset in Cityscapes layout under ``root``.

    Returns ``{split: [image paths]}``. Same arguments -> byte-identical files.
    """
    if height < 32 or width < 32:
        raise ValueError(f"image size {height}x{width} is too small (minimum 32x32)")
    counts = {"train": num_train, "val": num_val, "test": num_test}
    for split, n in counts.items():
        if n < 0:
            raise ValueError(f"num_{split} must be >= 0, got {n}")
    from tqdm import tqdm

    out = {}
    bar = tqdm(total=sum(counts.values()), desc="synthetic", unit="img", disable=not progress)
    for split_index, split in enumerate(SPLITS):
        n = counts[split]
        out[split] = []
        if n:
            log.info("writing %d %s images (%dx%d) under %s", n, split, height, width, root)
        cities = CITIES[split]
        for i in range(n):
            rng = np.random.default_rng(np.random.SeedSequence([int(seed), split_index, i]))
            scene = render_scene(height, width, rng)
            city = cities[i % len(cities)]
            paths = write_sample(root, split, city, i // len(cities), scene, labeled=(split != "test"))
            out[split].append(paths["image"])
            bar.update(1)
    bar.close()
    return out
