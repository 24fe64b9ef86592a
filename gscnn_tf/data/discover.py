"""Finds image/label pairs in a generic folder tree (Cityscapes layouts: data/cityscapes.py)."""
from __future__ import annotations

import glob
import os
from typing import Optional

from gscnn_tf.data.cityscapes import ConversionError, FileRef, Sample, require_pairs

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")


def discover_folder(images_dir: str, labels_dir: Optional[str], label_suffix: str = "") -> list:
    """Pairs ``images_dir/**/X.{png,jpg,jpeg}`` with ``labels_dir/**/X{label_suffix}.png``.

    ``labels_dir=None`` gives unlabeled samples. Names are relative paths without extension.
    """
    if not os.path.isdir(images_dir):
        raise ConversionError(f"{images_dir}: images directory not found")
    if labels_dir is not None and not os.path.isdir(labels_dir):
        raise ConversionError(f"{labels_dir}: labels directory not found")
    images = {}
    for path in sorted(glob.glob(os.path.join(images_dir, "**", "*"), recursive=True)):
        if os.path.isfile(path) and path.lower().endswith(IMAGE_EXTENSIONS):
            key = os.path.splitext(os.path.relpath(path, images_dir))[0]
            if key in images:
                raise ConversionError(f"{path}: another image has the same name ({images[key]})")
            images[key] = FileRef(path)
    if not images:
        raise ConversionError(f"{images_dir}: no images (*.png, *.jpg) found (empty split)")
    labels = {}
    if labels_dir is not None:
        suffix = label_suffix + ".png"
        for path in sorted(glob.glob(os.path.join(labels_dir, "**", "*" + suffix), recursive=True)):
            rel = os.path.relpath(path, labels_dir)
            labels[rel[: -len(suffix)]] = FileRef(path)
        require_pairs(images, labels, f"no matching label file *{suffix} in {labels_dir}",
                      f"label file without a matching image in {images_dir}")
    return [Sample(name=k.replace(os.sep, "/"), image=images[k], label=labels.get(k)) for k in sorted(images)]
