"""Sharded, resumable, parallel TFRecord writer with a manifest, and its verifier.

Output layout (``out_dir``)::

    {split}_fine-{i:05d}-of-{n:05d}.tfrecord   tf.Examples (gscnn_tf.data.tfexample keys)
    .{split}_fine-{i:05d}-of-{n:05d}.tfrecord.json   per-shard sidecar (count, sha256, input fingerprint)
    {split}_manifest.json                      counts per shard, sha256s, label mapping, version, source

Each record keeps the image's original encoded bytes (no re-encoding) and stores the
label as a single-channel PNG of *train ids* (255 = ignore); unlabeled samples (the
Cityscapes test split) have no label feature, so ``decode_example`` yields all-ignore.

Safety: every shard is written under a temporary name and renamed when complete
(:mod:`gscnn_tf.utils.atomic`), then its sidecar is written; the manifest is written
last. A failure or interrupt leaves only complete shards; a rerun skips every shard
whose sidecar fingerprint (inputs + mapping + shard plan) and sha256 still match.
:func:`gscnn_tf.data.verify.verify` re-reads everything and names the first broken shard.

Re-converting a split that already has a manifest never touches the published split
until the new one is complete: new shards are written into ``.{split}.staging/`` and
swapped in at the end (:func:`gscnn_tf.data.shards.publish_staged`). The swap is rolled forward by the next
run if it is interrupted (the staged manifest marks a complete staging directory), and a
failed re-conversion leaves the old shards and manifest as they were (the complete staged
shards are reused by the rerun). One converter at a time per ``out_dir``
(:func:`gscnn_tf.data.shards.output_lock`); worker processes die with their parent.

Modules: label maps in :mod:`gscnn_tf.data.label_maps`, generic-folder discovery in
:mod:`gscnn_tf.data.discover` (Cityscapes layouts: :mod:`gscnn_tf.data.cityscapes`), shard
encoding/writing/staging/locking in :mod:`gscnn_tf.data.shards`, verification in
:mod:`gscnn_tf.data.verify`; this module plans and orchestrates.
"""
from __future__ import annotations

import concurrent.futures as cf
import contextlib
import datetime as _dt
import glob
import hashlib
import json
import logging
import math
import os
import random
import shutil
from typing import Optional, Sequence

from gscnn_tf.data.cityscapes import ConversionError, Sample, discover_cityscapes, source_kind, validate_samples
from gscnn_tf.data.discover import discover_folder
from gscnn_tf.data.label_maps import LabelMapping, cityscapes_mapping, load_label_map
from gscnn_tf.data.shards import (
    FORMAT_VERSION,
    check_out_dir,
    cleanup_split,
    load_json,
    make_executor,
    manifest_path,
    output_lock,
    publish_staged,
    sha256_file,
    shard_name,
    sidecar_path,
    staging_dir,
    tool_version,
    worker_write_shard,
    write_error,
    write_json,
    write_shard,
)

log = logging.getLogger(__name__)


def _fingerprint(split: str, index: int, num_shards: int, samples: Sequence[Sample], mapping: LabelMapping) -> str:
    h = hashlib.sha256()
    h.update(json.dumps({"format": FORMAT_VERSION, "split": split, "index": index, "num_shards": num_shards,
                         "mapping": mapping.describe()}, sort_keys=True).encode())
    for s in samples:
        h.update(f"{s.name}\0{s.image}\0{s.label}\n".encode())
    return h.hexdigest()


def default_num_shards(num_examples: int) -> int:
    """About 100 images per shard (Cityscapes train: 30 shards of ~230 MB)."""
    return max(1, math.ceil(num_examples / 100))


def convert_samples(
    samples: Sequence[Sample],
    out_dir: str,
    split: str,
    mapping: LabelMapping,
    num_shards: Optional[int] = None,
    workers: int = 1,
    source: Optional[dict] = None,
    shuffle_seed: Optional[int] = None,
    progress: bool = False,
    force: bool = False,
    executor: Optional[cf.Executor] = None,
) -> dict:
    """Validates ``samples`` (header pre-pass), writes sharded TFRecords and the manifest.

    ``shuffle_seed`` (None = keep name order) shuffles the samples deterministically before
    sharding. Shards whose sidecar matches are reused unless ``force``. With ``workers > 1``
    shards are written by a process pool (``executor``, or one made here).
    Returns the manifest dict.
    """
    samples = list(samples)
    if not samples:
        raise ConversionError(f"split {split!r}: no samples (empty split)")
    check_out_dir(out_dir)
    with output_lock(out_dir):
        return _convert_split(samples, out_dir, split, mapping, num_shards, workers, source, shuffle_seed,
                              progress, force, executor)


def _convert_split(samples, out_dir, split, mapping, num_shards, workers, source, shuffle_seed, progress, force,
                   executor) -> dict:
    """:func:`convert_samples` once ``out_dir`` is locked."""
    from tqdm import tqdm

    log.info("%s: checking %d samples (PNG headers, pairing, sizes)", split, len(samples))
    validate_samples(samples)
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(samples)
    n = len(samples)
    num_shards = default_num_shards(n) if not num_shards else int(num_shards)
    if num_shards < 1:
        raise ConversionError(f"num_shards must be >= 1, got {num_shards}")
    if num_shards > n:
        log.warning("%s: %d shards requested for %d samples; using %d", split, num_shards, n, n)
        num_shards = n
    plan = []
    for i in range(num_shards):
        chunk = samples[i * n // num_shards:(i + 1) * n // num_shards]
        path = os.path.join(out_dir, shard_name(split, i, num_shards))
        plan.append((i, path, chunk, _fingerprint(split, i, num_shards, chunk, mapping)))
    stage = staging_dir(out_dir, split)
    if publish_staged(out_dir, split):
        log.warning("%s: finished replacing the split that an interrupted conversion had staged", split)
    # A published split (it has a manifest) stays untouched until the new one is complete:
    # new shards go to the staging directory. Without one there is nothing good to protect
    # and shards are written in place (and resumed in place).
    replacing = os.path.exists(manifest_path(out_dir, split))
    if replacing:
        os.makedirs(stage, exist_ok=True)
        cleanup_split(stage, split, {os.path.basename(p) for _, p, _, _ in plan})
        for tmp in glob.glob(os.path.join(out_dir, f".{split}_fine-*.tmp*")):
            with contextlib.suppress(OSError):
                os.remove(tmp)
    else:
        shutil.rmtree(stage, ignore_errors=True)
        cleanup_split(out_dir, split, {os.path.basename(p) for _, p, _, _ in plan})
    write_dir = stage if replacing else out_dir

    def complete(path, fp):
        side = load_json(sidecar_path(path))
        if (not force and side and side.get("fingerprint") == fp and os.path.isfile(path)
                and side.get("sha256") == sha256_file(path)):
            return {k: side[k] for k in ("file", "num_examples", "sha256", "bytes")}
        return None

    results: dict = {}
    todo = []
    for i, path, chunk, fp in plan:
        name = os.path.basename(path)
        found = complete(path, fp) or (complete(os.path.join(stage, name), fp) if replacing else None)
        if found is not None:
            results[i] = found
            log.info("%s: shard %s is complete, skipping", split, name)
        else:
            todo.append((i, os.path.join(write_dir, name), chunk, fp))
    done_examples = sum(r["num_examples"] for r in results.values())
    log.info("%s: writing %d of %d shards (%d samples) to %s with %d worker(s)",
             split, len(todo), num_shards, sum(len(t[2]) for t in todo), out_dir, workers)

    bar = tqdm(total=n, initial=done_examples, desc=f"{split}", unit="img", disable=not progress)

    def finish(i, path, fp, info):
        try:
            write_json(sidecar_path(path), {**info, "fingerprint": fp})
        except ConversionError:
            with contextlib.suppress(OSError):  # a shard without its sidecar would be rewritten anyway
                os.remove(path)
            raise
        results[i] = info

    try:
        if workers <= 1 or len(todo) <= 1:
            for i, path, chunk, fp in todo:
                finish(i, path, fp, write_shard(path, chunk, mapping.lut, mapping.accepted,
                                                lambda _r: bar.update(1)))
        else:
            with contextlib.ExitStack() as stack:
                pool = executor or stack.enter_context(make_executor(min(workers, len(todo))))
                futures = {pool.submit(worker_write_shard, (path, chunk, mapping.lut, mapping.accepted)):
                           (i, path, chunk, fp) for i, path, chunk, fp in todo}
                try:
                    for fut in cf.as_completed(futures):
                        i, path, chunk, fp = futures[fut]
                        finish(i, path, fp, fut.result())
                        bar.update(len(chunk))
                except BaseException as e:
                    for fut in futures:
                        fut.cancel()
                    if isinstance(e, KeyboardInterrupt):
                        running = sum(1 for fut in futures if not fut.done())
                        log.info("%s: stopping; %d shard(s) being written will finish first", split, running)
                    cf.wait(futures)  # running shards finish (complete) or clean up their temp files
                    if isinstance(e, cf.process.BrokenProcessPool):
                        raise ConversionError(f"{out_dir}: a worker process died while writing {split} shards "
                                              f"(out of memory or killed?); rerun to resume") from None
                    raise
    finally:
        bar.close()
        for tmp in glob.glob(os.path.join(write_dir, f".{split}_fine-*.tmp*")):
            with contextlib.suppress(OSError):
                os.remove(tmp)

    manifest = {
        "format_version": FORMAT_VERSION,
        "tool": "gscnn_tf.data.convert",
        "tool_version": tool_version(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "source": source or {},
        "split": split,
        "num_examples": n,
        "num_shards": num_shards,
        "has_labels": any(s.label is not None for s in samples),
        "label_mapping": mapping.describe(),
        "train_ids": mapping.train_ids,
        "shards": [results[i] for i in range(num_shards)],
    }
    write_json(manifest_path(write_dir, split), manifest)
    if replacing:
        try:
            publish_staged(out_dir, split)
        except OSError as e:
            raise write_error(e.filename or out_dir, e) from None
    log.info("%s: %d images in %d shards, manifest %s", split, n, num_shards, manifest_path(out_dir, split))
    return manifest


def convert_cityscapes(
    root: str,
    out_dir: str,
    splits: Sequence[str] = ("train", "val"),
    num_shards=None,
    workers: int = 1,
    progress: bool = False,
    force: bool = False,
) -> dict:
    """Converts a Cityscapes root (folders or official zips) -> ``{split: manifest}``.

    ``num_shards``: None (about 100 images per shard), an int for every split, or a
    ``{split: int}`` dict. The train split is shuffled deterministically before sharding.
    The test split is written without labels.
    """
    kind = source_kind(root)
    mapping = cityscapes_mapping()
    found = {split: discover_cityscapes(root, split) for split in splits}  # fail before writing anything
    out = {}
    check_out_dir(out_dir)
    with output_lock(out_dir), contextlib.ExitStack() as stack:
        executor = stack.enter_context(make_executor(workers)) if workers > 1 else None
        for split, samples in found.items():
            shards = num_shards.get(split) if isinstance(num_shards, dict) else num_shards
            out[split] = convert_samples(
                samples, out_dir, split, mapping, num_shards=shards, workers=workers,
                source={"kind": f"cityscapes-{kind}", "root": os.path.abspath(root)},
                shuffle_seed=0 if split == "train" else None, progress=progress, force=force,
                executor=executor)
    return out


def convert_folder(
    images_dir: str,
    labels_dir: Optional[str],
    out_dir: str,
    label_map,
    split: str = "train",
    label_suffix: str = "",
    unmapped: str = "error",
    num_shards=None,
    workers: int = 1,
    progress: bool = False,
    force: bool = False,
) -> dict:
    """Converts a generic folder of images (+ label PNGs) with a user label map -> manifest.

    ``label_map`` is a path (JSON/YAML ``{raw: train id}``) or a :class:`LabelMapping`.
    """
    mapping = label_map if isinstance(label_map, LabelMapping) else load_label_map(label_map, unmapped)
    samples = discover_folder(images_dir, labels_dir, label_suffix)
    return convert_samples(
        samples, out_dir, split, mapping, num_shards=num_shards, workers=workers,
        source={"kind": "folder", "images": os.path.abspath(images_dir),
                "labels": os.path.abspath(labels_dir) if labels_dir else None},
        shuffle_seed=0 if split == "train" else None, progress=progress, force=force)
