"""Checks of TFRecord shard files: the manifest's shard set, corrupt records, read errors.

A read error from a corrupt shard (``DataLossError``) does not carry the file name in
TensorFlow; :func:`find_corrupt_records` scans a pattern and names the bad file
(:func:`describe_data_error` turns such an error, or a failed record check of the input
pipeline, into one line). :func:`check_shards` compares the shards a pattern matches with
the converter's manifest before training starts. ``python -m gscnn_tf.data.shard_checks
PATTERN`` lists the corrupt files of a pattern.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import re
from typing import Optional, Sequence

import tensorflow as tf

logger = logging.getLogger(__name__)

RECORD_ERROR = "corrupt record"  # prefix of the input pipeline's record-check messages (describe_data_error finds it)


def list_shards(pattern: str, field_name: str = "data.train_pattern") -> list:
    """Sorted files matching ``pattern``; clear errors for an empty or unmatched pattern."""
    if not pattern:
        raise ValueError(f"{field_name} is empty: set it to a glob of TFRecord shards")
    files = sorted(tf.io.gfile.glob(pattern))
    if not files:
        raise FileNotFoundError(f"no files match {field_name} = {pattern!r}")
    return files


def find_corrupt_records(pattern: str) -> list:
    """Reads every record of every shard; returns ``[(path, error message)]`` of bad files.

    TensorFlow's ``DataLossError`` ("corrupted record at N") does not name the file; run
    this (or ``python -m gscnn_tf.data.shard_checks PATTERN``) to find it.
    """
    bad = []
    for path in list_shards(pattern, "pattern"):
        try:
            for _ in tf.data.TFRecordDataset(path):
                pass
        except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as exc:
            bad.append((path, _short_tf_message(exc.message or str(exc))))
    return bad


def _short_tf_message(text: str) -> str:
    """The last line of a TensorFlow op error without its function/op decorations."""
    line = text.strip().splitlines()[-1] if text.strip() else ""
    line = re.sub(r"\{\{[^}]*\}\}\s*", "", line)
    return re.sub(r"\s*\[Op:[^\]]*\].*$", "", line).strip()


class ShardCheckError(ValueError):
    """The shards a pattern matches do not agree with the converter's manifest."""


def _few(names: list, n: int = 5) -> str:
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")


def check_dataset(manifest: dict, mpath: str, dataset) -> list:
    """Where a converter manifest's ``label_mapping`` and ``train_ids`` disagree with ``dataset``
    (a :class:`gscnn_tf.config.DatasetConfig`): one message per field, naming ``mpath``."""
    mapping, problems = manifest.get("label_mapping") or {}, []
    k, ignore = len(dataset.class_names), dataset.ignore_label
    fields = (("class_names", list(dataset.class_names), mapping.get("class_names") or None),
              ("ignore_label", ignore, mapping.get("ignore_label")),
              ("label_map", {str(s): t for s, t in dataset.label_map.items()}, mapping.get("mapping")))
    for name, ours, theirs in fields:
        if theirs is not None and theirs != ours:
            problems.append(f"{mpath}: the shards were converted with {name} {_short(theirs)}, the config's "
                            f"dataset.{name} is {_short(ours)}; convert with a label map of this dataset or "
                            "set the config's dataset section to the converter's")
    above = [t for t in manifest.get("train_ids", []) if t >= k and t != ignore]
    if above:
        problems.append(f"{mpath}: labels {above} are not train ids of the config's {k} classes "
                        f"(0..{k - 1}, ignore {ignore})")
    return problems


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


def check_shards(pattern: str, field_name: str = "data.train_pattern", dataset=None) -> Optional[int]:
    """Checks the shards matching ``pattern`` against the converter's manifest(s) next to them.

    The converter writes ``{split}_manifest.json`` listing every shard with its size
    (:mod:`gscnn_tf.data.convert`). Refused, naming the files: a shard a manifest lists
    that is missing, a matched shard no manifest lists (left over from an earlier
    conversion), a shard whose size differs from the manifest's (truncated or changed).
    A pattern may select a subset of a split's shards. Shards without any manifest next
    to them (made by other tools) are used as they are, with a warning. With ``dataset``
    (a :class:`gscnn_tf.config.DatasetConfig`) the manifests' label description must match
    it (:func:`check_dataset`).

    Returns:
      the number of records in the matched shards per the manifests, or None when some
      shards have no manifest.
    """
    files = list_shards(pattern, field_name)
    by_dir: dict = {}
    for path in files:
        by_dir.setdefault(os.path.dirname(path), []).append(os.path.basename(path))
    problems, total, covered = [], 0, True
    for directory, names in by_dir.items():
        listed = {}  # shard file -> (manifest path, shard info)
        manifests = {}
        for mpath in sorted(tf.io.gfile.glob(os.path.join(directory, "*_manifest.json"))):
            try:
                with tf.io.gfile.GFile(mpath, "r") as f:
                    manifest = json.load(f)
                shards = list(manifest["shards"])
                for info in shards:
                    listed[str(info["file"])] = (mpath, info)
                if dataset is not None:
                    problems += check_dataset(manifest, mpath, dataset)
            except (ValueError, KeyError, TypeError, tf.errors.OpError) as exc:
                problems.append(f"{mpath}: unreadable manifest ({exc}); re-run the conversion")
                continue
            manifests[mpath] = shards
        if not listed:
            if not problems:
                logger.warning("%s: no converter manifest next to the shards of %s = %r; cannot check that none "
                               "is missing", directory, field_name, pattern)
            covered = False
            continue
        unlisted = [n for n in names if n not in listed]
        if unlisted:
            problems.append(f"{field_name} = {pattern!r} matches {len(unlisted)} shard(s) in {directory} that no "
                            f"manifest lists: {_few(unlisted)} (left over from an earlier conversion? delete them, "
                            "or re-run the conversion)")
        for mpath in sorted({listed[n][0] for n in names if n in listed}):
            expected = [str(info["file"]) for info in manifests[mpath]]
            missing = [f for f in expected if not tf.io.gfile.exists(os.path.join(directory, f))]
            if missing:
                problems.append(f"{mpath} lists {len(expected)} shards, {len(missing)} of them missing: "
                                f"{_few(missing)}; re-run the conversion")
            selected = [f for f in expected if f in names]
            if len(selected) < len(expected) - len(missing):
                logger.info("%s = %r selects %d of the %d shards of %s", field_name, pattern, len(selected),
                            len(expected), mpath)
        for name in names:
            if name not in listed:
                continue
            info = listed[name][1]
            size = tf.io.gfile.stat(os.path.join(directory, name)).length
            if info.get("bytes") is not None and size != int(info["bytes"]):
                problems.append(f"{os.path.join(directory, name)}: {size} bytes, {listed[name][0]} says "
                                f"{info['bytes']} (truncated or changed); re-run the conversion")
            total += int(info.get("num_examples", 0))
    if problems:
        raise ShardCheckError("; ".join(problems))
    return total if covered else None


def describe_data_error(exc: tf.errors.OpError, patterns: Sequence[str]) -> Optional[str]:
    """One line for a data error met while iterating a dataset, naming the shard, or None.

    ``DataLossError`` (a corrupt or truncated shard) does not name the file in
    TensorFlow: the shards of ``patterns`` are scanned (:func:`find_corrupt_records`) to
    find it. The record checks of this pipeline (``corrupt record: ...``) name the shard
    and the image's filename themselves.
    """
    text = exc.message if getattr(exc, "message", None) else str(exc)
    if isinstance(exc, tf.errors.DataLossError):
        bad = []
        for pattern in patterns:
            with contextlib.suppress(ValueError, FileNotFoundError):
                bad += find_corrupt_records(pattern)
        if bad:
            return f"corrupt shard {bad[0][0]}: {bad[0][1]}" + (
                f" (and {len(bad) - 1} more corrupt shard(s))" if len(bad) > 1 else "") + \
                "; `python -m gscnn_tf.data.shard_checks PATTERN` lists them; re-run the conversion"
        return f"corrupt data while reading {', '.join(patterns) or 'the dataset'}: {_short_tf_message(text)}"
    if RECORD_ERROR in text:
        line = next(l for l in text.splitlines() if RECORD_ERROR in l)
        # tf.debugging.Assert prints its data as "[text] [b'value'] ..."; keep the words only.
        parts = [p.strip() for p in line[line.index(RECORD_ERROR):].replace("] [", "\x00").split("\x00")]
        cleaned = []
        for part in parts:
            part = part.strip("[]").strip()
            if part.startswith(("b'", 'b"')) and part[-1:] in ("'", '"'):
                part = part[2:-1]
            cleaned.append(part)
        return " ".join(cleaned).strip() + "; re-run the conversion"
    return None


def _main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="Find corrupt TFRecord shards (names the file).")
    parser.add_argument("pattern")
    args = parser.parse_args(argv)
    bad = find_corrupt_records(args.pattern)
    for path, message in bad:
        print(f"{path}: {message}")
    print(f"{len(bad)} corrupt file(s)")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(_main())
