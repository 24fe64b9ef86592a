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
:func:`verify` re-reads everything and names the first broken shard.

Re-converting a split that already has a manifest never touches the published split
until the new one is complete: new shards are written into ``.{split}.staging/`` and
swapped in at the end (:func:`_publish_staged`). The swap is rolled forward by the next
run if it is interrupted (the staged manifest marks a complete staging directory), and a
failed re-conversion leaves the old shards and manifest as they were (the complete staged
shards are reused by the rerun). One converter at a time per ``out_dir``
(:func:`output_lock`); worker processes die with their parent (:func:`_worker_init`).
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
import multiprocessing
import os
import random
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import cv2
import numpy as np

from gscnn_tf import labels as _labels
from gscnn_tf.data.cityscapes import (
    ConversionError,
    FileRef,
    Sample,
    discover_cityscapes,
    require_pairs,
    source_kind,
    validate_samples,
)
from gscnn_tf.utils.atomic import atomic_path, atomic_write_text

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
LOCK_NAME = ".gscnn-convert.lock"
STAGING_SUFFIX = ".staging"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")


class VerificationError(Exception):
    """A written dataset does not match its manifest (message names the shard)."""


def tool_version() -> str:
    try:
        from importlib.metadata import version

        return version("gscnn_tf")
    except Exception:  # not installed as a distribution (e.g. run from the checkout)
        return "0.1.0"


def shard_name(split: str, index: int, num_shards: int) -> str:
    return f"{split}_fine-{index:05d}-of-{num_shards:05d}.tfrecord"


def sidecar_path(shard_path: str) -> str:
    d, b = os.path.split(shard_path)
    return os.path.join(d, f".{b}.json")


def manifest_path(out_dir: str, split: str) -> str:
    return os.path.join(out_dir, f"{split}_manifest.json")


def staging_dir(out_dir: str, split: str) -> str:
    """Where a re-conversion writes its shards until the new split is complete."""
    return os.path.join(out_dir, f".{split}{STAGING_SUFFIX}")


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# --------------------------------------------------------------------------- label maps
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

    def describe(self) -> dict:
        return {
            "kind": self.kind,
            "ignore_label": self.ignore_label,
            "unmapped": self.unmapped,
            "class_names": list(self.class_names),
            "mapping": {str(i): int(self.lut[i]) for i in range(256) if self.known[i]},
        }

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

    The file may be a flat mapping or ``{"mapping": {...}, "class_names": [...]}``.
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


# --------------------------------------------------------------------------- generic folders
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


# --------------------------------------------------------------------------- records
def _image_format(ref: FileRef) -> str:
    ext = os.path.splitext(ref.basename)[1].lower()
    return "jpeg" if ext in (".jpg", ".jpeg") else ext.lstrip(".") or "png"


def encode_sample(sample: Sample, lut: np.ndarray, known: np.ndarray):
    """Reads, checks and encodes one sample; returns a ``tf.train.Example``."""
    from gscnn_tf.data.tfexample import make_example

    img_bytes = sample.image.read()
    img = cv2.imdecode(np.frombuffer(img_bytes, np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ConversionError(f"{sample.image}: cannot decode image (corrupt or truncated file)")
    if img.dtype != np.uint8:
        raise ConversionError(f"{sample.image}: {img.dtype} image; only 8-bit images are supported")
    h, w = img.shape[:2]
    label_png = None
    if sample.label is not None:
        lab_bytes = sample.label.read()
        lab = cv2.imdecode(np.frombuffer(lab_bytes, np.uint8), cv2.IMREAD_UNCHANGED)
        if lab is None:
            raise ConversionError(f"{sample.label}: cannot decode label PNG (corrupt or truncated file)")
        if lab.ndim != 2 or lab.dtype != np.uint8:
            raise ConversionError(
                f"{sample.label}: label must be an 8-bit single-channel PNG (got shape {lab.shape}, {lab.dtype})")
        if lab.shape != (h, w):
            raise ConversionError(
                f"{sample.label}: label size {lab.shape[1]}x{lab.shape[0]} differs from image size {w}x{h}")
        values = np.unique(lab)
        bad = values[~known[values]]
        if bad.size:
            raise ConversionError(
                f"{sample.label}: label values {[int(v) for v in bad[:10]]} are not in the label map")
        ok, buf = cv2.imencode(".png", lut[lab])
        if not ok:
            raise ConversionError(f"{sample.label}: PNG encoding of train ids failed")
        label_png = buf.tobytes()
    return make_example(img_bytes, label_png, sample.name, h, w, image_format=_image_format(sample.image))


def write_shard(path: str, samples: Sequence[Sample], lut: np.ndarray, known: np.ndarray,
                on_record: Optional[Callable[[int], None]] = None) -> dict:
    """Writes one shard atomically; returns ``{"file", "num_examples", "sha256", "bytes"}``."""
    import tensorflow as tf

    try:
        with atomic_path(path, suffix=".tfrecord") as tmp:
            with tf.io.TFRecordWriter(tmp) as writer:
                for i, s in enumerate(samples):
                    # deterministic=True sorts the feature map: byte-identical shards in any process
                    writer.write(encode_sample(s, lut, known).SerializeToString(deterministic=True))
                    if on_record is not None:
                        on_record(i)
            digest = sha256_file(tmp)
            size = os.path.getsize(tmp)
    except (OSError, tf.errors.OpError) as e:  # input errors are ConversionErrors already
        raise _write_error(path, e) from None
    return {"file": os.path.basename(path), "num_examples": len(samples), "sha256": digest, "bytes": size}


def _write_error(path: str, error: BaseException) -> ConversionError:
    """One-line error naming the output file (disk full, quota, I/O error)."""
    reason = getattr(error, "strerror", None) or getattr(error, "message", None) or str(error)
    reason = reason.splitlines()[0] if reason else type(error).__name__
    if reason.startswith(path):  # TensorFlow's messages start with the file name
        reason = reason[len(path):].lstrip(" ;:")
    return ConversionError(f"{path}: cannot write ({reason}); complete shards and any earlier dataset are kept, "
                           "free space and rerun to resume")


def _write_json(path: str, data: dict) -> None:
    try:
        atomic_write_text(path, json.dumps(data, indent=1))
    except OSError as e:
        raise _write_error(path, e) from None


def _worker_init(parent_pid: int) -> None:
    """Process-pool initializer: the worker dies with the process that started it.

    Linux delivers SIGKILL to the worker when its parent dies (``PR_SET_PDEATHSIG``, so
    even a SIGKILLed converter leaves no orphan writing into ``out_dir``); elsewhere, and
    as a fallback, a thread checks every second that the parent is still there.
    """
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
    if os.getppid() != parent_pid:  # the parent died before the line above ran
        os._exit(1)

    def watch():
        while True:
            time.sleep(1.0)
            if os.getppid() != parent_pid:
                os._exit(1)

    threading.Thread(target=watch, name="parent-watchdog", daemon=True).start()
    from gscnn_tf.cli.common import import_tensorflow_quietly

    import_tensorflow_quietly()


def _worker_write_shard(args) -> dict:
    """Process-pool entry point (module-level so it pickles under 'spawn')."""
    path, samples, lut, known = args
    return write_shard(path, samples, lut, known)


# --------------------------------------------------------------------------- conversion
def _check_out_dir(out_dir: str) -> None:
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as e:
        raise ConversionError(f"{out_dir}: cannot create output directory ({e.strerror})") from None
    if not os.path.isdir(out_dir):
        raise ConversionError(f"{out_dir}: output path exists and is not a directory")
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-test.", dir=out_dir)
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        raise ConversionError(f"{out_dir}: output directory is not writable ({e.strerror})") from None


def _fingerprint(split: str, index: int, num_shards: int, samples: Sequence[Sample], mapping: LabelMapping) -> str:
    h = hashlib.sha256()
    h.update(json.dumps({"format": FORMAT_VERSION, "split": split, "index": index, "num_shards": num_shards,
                         "mapping": mapping.describe()}, sort_keys=True).encode())
    for s in samples:
        h.update(f"{s.name}\0{s.image}\0{s.label}\n".encode())
    return h.hexdigest()


def _load_json(path: str) -> Optional[dict]:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _cleanup_split(out_dir: str, split: str, keep: set) -> None:
    """Removes leftover temporary files and shards of ``split`` that are not in the plan."""
    for tmp in glob.glob(os.path.join(out_dir, f".{split}_fine-*.tmp*")):
        log.warning("removing leftover temporary file %s", tmp)
        with contextlib.suppress(OSError):
            os.remove(tmp)
    for shard in glob.glob(os.path.join(out_dir, f"{split}_fine-*-of-*.tfrecord")):
        if os.path.basename(shard) not in keep:
            log.warning("removing shard %s from an earlier conversion with a different plan", shard)
            for p in (shard, sidecar_path(shard)):
                with contextlib.suppress(OSError):
                    os.remove(p)


def make_executor(workers: int) -> cf.ProcessPoolExecutor:
    """Process pool for shard writing: 'fork' while TensorFlow is not loaded here (fast start),
    'spawn' once it is (forking an initialised TF runtime is unsafe). Workers die with this
    process (:func:`_worker_init`)."""
    method = "fork" if "tensorflow" not in sys.modules and "fork" in multiprocessing.get_all_start_methods() \
        else "spawn"
    return cf.ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context(method),
                                  initializer=_worker_init, initargs=(os.getpid(),))


_HELD_LOCKS: dict = {}  # realpath of out_dir -> [fd, depth]: the lock is re-entrant within a process


@contextlib.contextmanager
def output_lock(out_dir: str):
    """Exclusive ``flock`` on ``out_dir/.gscnn-convert.lock`` for the whole conversion.

    A second converter on the same ``out_dir`` fails at once with a message naming the
    holder (pid, host, start time). The kernel drops the lock when the holder dies, so a
    killed run never blocks the next one.
    """
    import fcntl

    key = os.path.realpath(out_dir)
    held = _HELD_LOCKS.get(key)
    if held is not None:
        held[1] += 1
        try:
            yield
        finally:
            held[1] -= 1
        return
    path = os.path.join(out_dir, LOCK_NAME)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as e:
        raise ConversionError(f"{path}: cannot create the lock file ({e.strerror})") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.read(fd, 4096).decode("utf-8", "replace").strip() or "another process"
        os.close(fd)
        raise ConversionError(f"{out_dir}: another conversion is writing here ({holder}); wait for it to finish, "
                              f"stop it, or use another --out") from None
    os.ftruncate(fd, 0)
    started = _dt.datetime.now().isoformat(timespec="seconds")
    os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}, started {started}\n".encode())
    _HELD_LOCKS[key] = [fd, 1]
    try:
        yield
    finally:
        del _HELD_LOCKS[key]
        os.close(fd)  # releases the lock; the file stays (removing it would race with a waiting run)


def _move_shard(src_dir: str, dst_dir: str, name: str) -> None:
    """Moves a shard and its sidecar (shard first: a sidecar never describes a missing shard)."""
    for n in (name, os.path.basename(sidecar_path(os.path.join(src_dir, name)))):
        if os.path.exists(os.path.join(src_dir, n)):
            os.replace(os.path.join(src_dir, n), os.path.join(dst_dir, n))


def _publish_staged(out_dir: str, split: str) -> bool:
    """Swaps a complete staged split in (idempotent: an interrupted swap is finished by rerunning it).

    The staged manifest (written last into the staging directory) marks it complete. Order:
    old manifest removed (the split is "being replaced" for readers), staged shards moved in
    over same-named old ones, old shards the new plan does not list removed, new manifest
    moved in, staging directory removed. Returns False when nothing complete was staged.
    """
    stage = staging_dir(out_dir, split)
    staged_manifest = manifest_path(stage, split)
    manifest = _load_json(staged_manifest)
    if manifest is None:
        return False
    keep = {s["file"] for s in manifest.get("shards", [])}
    with contextlib.suppress(FileNotFoundError):
        os.remove(manifest_path(out_dir, split))
    for name in sorted(os.listdir(stage)):
        if name in keep:
            _move_shard(stage, out_dir, name)
    for shard in glob.glob(os.path.join(out_dir, f"{split}_fine-*-of-*.tfrecord")):
        if os.path.basename(shard) not in keep:
            for p in (shard, sidecar_path(shard)):
                with contextlib.suppress(OSError):
                    os.remove(p)
    os.replace(staged_manifest, manifest_path(out_dir, split))
    shutil.rmtree(stage, ignore_errors=True)
    return True


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
    _on_record: Optional[Callable[[int, int], None]] = None,
) -> dict:
    """Validates ``samples`` (header pre-pass), writes sharded TFRecords and the manifest.

    ``shuffle_seed`` (None = keep name order) shuffles the samples deterministically before
    sharding. Shards whose sidecar matches are reused unless ``force``. With ``workers > 1``
    shards are written by a process pool (``executor``, or one made here). ``_on_record`` is a
    test hook called as ``(shard_index, record_index)`` after each record (in-process only).
    Returns the manifest dict.
    """
    samples = list(samples)
    if not samples:
        raise ConversionError(f"split {split!r}: no samples (empty split)")
    _check_out_dir(out_dir)
    with output_lock(out_dir):
        return _convert_split(samples, out_dir, split, mapping, num_shards, workers, source, shuffle_seed,
                              progress, force, executor, _on_record)


def _convert_split(samples, out_dir, split, mapping, num_shards, workers, source, shuffle_seed, progress, force,
                   executor, _on_record) -> dict:
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
    if _publish_staged(out_dir, split):
        log.warning("%s: finished replacing the split that an interrupted conversion had staged", split)
    # A published split (it has a manifest) stays untouched until the new one is complete:
    # new shards go to the staging directory. Without one there is nothing good to protect
    # and shards are written in place (and resumed in place).
    replacing = os.path.exists(manifest_path(out_dir, split))
    if replacing:
        os.makedirs(stage, exist_ok=True)
        _cleanup_split(stage, split, {os.path.basename(p) for _, p, _, _ in plan})
        for tmp in glob.glob(os.path.join(out_dir, f".{split}_fine-*.tmp*")):
            with contextlib.suppress(OSError):
                os.remove(tmp)
    else:
        shutil.rmtree(stage, ignore_errors=True)
        _cleanup_split(out_dir, split, {os.path.basename(p) for _, p, _, _ in plan})
    write_dir = stage if replacing else out_dir

    def complete(path, fp):
        side = _load_json(sidecar_path(path))
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
            _write_json(sidecar_path(path), {**info, "fingerprint": fp})
        except ConversionError:
            with contextlib.suppress(OSError):  # a shard without its sidecar would be rewritten anyway
                os.remove(path)
            raise
        results[i] = info

    try:
        if workers <= 1 or len(todo) <= 1:
            for i, path, chunk, fp in todo:
                def on_record(r, _i=i):
                    bar.update(1)
                    if _on_record is not None:
                        _on_record(_i, r)
                finish(i, path, fp, write_shard(path, chunk, mapping.lut, mapping.accepted, on_record))
        else:
            with contextlib.ExitStack() as stack:
                pool = executor or stack.enter_context(make_executor(min(workers, len(todo))))
                futures = {pool.submit(_worker_write_shard, (path, chunk, mapping.lut, mapping.accepted)):
                           (i, path, chunk, fp) for i, path, chunk, fp in todo}
                try:
                    for fut in cf.as_completed(futures):
                        i, path, chunk, fp = futures[fut]
                        finish(i, path, fp, fut.result())
                        bar.update(len(chunk))
                except BaseException as e:
                    for fut in futures:
                        fut.cancel()
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
    _write_json(manifest_path(write_dir, split), manifest)
    if replacing:
        try:
            _publish_staged(out_dir, split)
        except OSError as e:
            raise _write_error(e.filename or out_dir, e) from None
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
    _on_record=None,
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
    _check_out_dir(out_dir)
    with output_lock(out_dir), contextlib.ExitStack() as stack:
        executor = stack.enter_context(make_executor(workers)) if workers > 1 else None
        for split, samples in found.items():
            shards = num_shards.get(split) if isinstance(num_shards, dict) else num_shards
            out[split] = convert_samples(
                samples, out_dir, split, mapping, num_shards=shards, workers=workers,
                source={"kind": f"cityscapes-{kind}", "root": os.path.abspath(root)},
                shuffle_seed=0 if split == "train" else None, progress=progress, force=force,
                executor=executor, _on_record=_on_record)
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


# --------------------------------------------------------------------------- verification
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
        manifest = _load_json(mpath)
        if manifest is None:
            problems.append(f"{mpath}: manifest missing or unreadable")
            continue
        shards = manifest.get("shards", [])
        listed = {s["file"] for s in shards}
        for extra in sorted(glob.glob(os.path.join(out_dir, f"{split}_fine-*.tfrecord"))):
            if os.path.basename(extra) not in listed:
                problems.append(f"{extra}: shard not listed in {os.path.basename(mpath)}")
        allowed = np.zeros(256, bool)
        allowed[manifest.get("train_ids", list(range(_labels.NUM_CLASSES)) + [255])] = True
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
