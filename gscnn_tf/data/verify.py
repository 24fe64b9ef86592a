"""Verification of a converted directory against its manifests (re-reads every record)."""
from __future__ import annotations

import glob
import logging
import os
from typing import Optional, Sequence

import numpy as np

from gscnn_tf.data import labels as _labels
from gscnn_tf.data.shards import load_json, manifest_path, sha256_file

log = logging.getLogger(__name__)


class VerificationError(Exception):
    """A written dataset does not match its manifest (message names the shard)."""


def _verify_shard(path: str, info: dict, has_labels: bool, allowed: np.ndarray, names: set) -> list:
    import tensorflow as tf

    from gscnn_tf.data import tfexample as tfx

    problems = []
    shard = os.path.basename(path)
    if not os.path.isfile(path):
        return [f"{path}: shard missing"]
    size = os.path.getsize(path)
    if size != info.get("bytes"):
        problems.append(f"{path}: size {size} bytes, manifest says {info.get('bytes')}")
    digest = sha256_file(path)
    if digest != info.get("sha256"):
        problems.append(f"{path}: sha256 mismatch (file {digest[:12]}..., manifest {str(info.get('sha256'))[:12]}...)")
        return problems
    count = 0
    try:
        for raw in tf.data.TFRecordDataset(path):
            parsed = tfx.parse_example(raw)
            image, label, name = tfx.decode_example(parsed)
            name = name.numpy().decode("utf-8")
            where = f"{shard} record {count} ({name})"
            count += 1
            if name in names:
                problems.append(f"{path}: duplicate filename {name}")
            names.add(name)
            h, w = int(parsed[tfx.IMAGE_HEIGHT]), int(parsed[tfx.IMAGE_WIDTH])
            if tuple(image.shape[:2]) != (h, w):
                problems.append(f"{where}: image is {image.shape[1]}x{image.shape[0]}, header says {w}x{h}")
            if tuple(label.shape) != tuple(image.shape[:2]):
                problems.append(f"{where}: label shape {tuple(label.shape)} != image {tuple(image.shape[:2])}")
            present = bool(tf.strings.length(parsed[tfx.LABEL_ENCODED]) > 0)
            if present != has_labels:
                problems.append(f"{where}: label {'present' if present else 'missing'}, manifest says "
                                f"has_labels={has_labels}")
            values = np.unique(label.numpy())
            bad = values[~allowed[values]]
            if bad.size:
                problems.append(f"{where}: label values {bad.tolist()} are not train ids of the mapping")
    except tf.errors.OpError as e:
        problems.append(f"{path}: unreadable record after {count} records ({e.message.splitlines()[0]})")
        return problems
    if count != info.get("num_examples"):
        problems.append(f"{path}: {count} records, manifest says {info.get('num_examples')}")
    return problems


def verify(out_dir: str, splits: Optional[Sequence[str]] = None, progress: bool = False) -> dict:
    """Decodes every record of every split's shards and checks them against the manifest.

    Checks shard set, byte sizes, sha256, record counts, image sizes, label presence and
    label values. Returns ``{split: {"num_examples", "num_shards"}}``; raises
    :class:`VerificationError` listing the problems (each naming its shard).
    """
    from tqdm import tqdm

    if not os.path.isdir(out_dir):
        raise VerificationError(f"{out_dir}: not a directory")
    if splits is None:
        found = sorted(glob.glob(os.path.join(out_dir, "*_manifest.json")))
        splits = [os.path.basename(p)[: -len("_manifest.json")] for p in found]
        if not splits:
            raise VerificationError(f"{out_dir}: no *_manifest.json found")
    problems, report = [], {}
    for split in splits:
        mpath = manifest_path(out_dir, split)
        manifest = load_json(mpath)
        if manifest is None:
            problems.append(f"{mpath}: manifest missing or unreadable")
            continue
        shards = manifest.get("shards", [])
        listed = {s["file"] for s in shards}
        for extra in sorted(glob.glob(os.path.join(out_dir, f"{split}_fine-*.tfrecord"))):
            if os.path.basename(extra) not in listed:
                problems.append(f"{extra}: shard not listed in {os.path.basename(mpath)}")
        allowed = np.zeros(256, bool)
        allowed[manifest.get("train_ids", list(range(_labels.NUM_CLASSES)) + [_labels.IGNORE_LABEL])] = True
        allowed[_labels.IGNORE_LABEL] = True
        names: set = set()
        total = sum(s.get("num_examples", 0) for s in shards)
        if total != manifest.get("num_examples"):
            problems.append(f"{mpath}: shard counts sum to {total}, manifest says {manifest.get('num_examples')}")
        log.info("%s: verifying %d shards (%d records)", split, len(shards), total)
        for info in tqdm(shards, desc=f"verify {split}", unit="shard", disable=not progress):
            problems += _verify_shard(os.path.join(out_dir, info["file"]), info,
                                      bool(manifest.get("has_labels", True)), allowed, names)
        report[split] = {"num_examples": total, "num_shards": len(shards)}
    if problems:
        shown = problems[:20]
        more = f"\n... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise VerificationError("\n".join(shown) + more)
    return report
