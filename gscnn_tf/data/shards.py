"""Shard files: names, encoding, atomic writing, the staging swap and the output lock.

Layout of a converted directory (``out_dir``)::

    {split}_fine-{i:05d}-of-{n:05d}.tfrecord   tf.Examples (gscnn_tf.data.tfexample keys)
    .{split}_fine-{i:05d}-of-{n:05d}.tfrecord.json   per-shard sidecar (count, sha256, input fingerprint)
    {split}_manifest.json                      counts per shard, sha256s, label mapping, version, source
    .{split}.staging/                          a re-conversion's shards until they replace the split

Every shard is written under a temporary name and renamed when complete
(:mod:`gscnn_tf.utils.atomic`); :func:`publish_staged` swaps a complete staged split in
(idempotent, so an interrupted swap is rolled forward by the next run); one converter at
a time per ``out_dir`` (:func:`output_lock`); worker processes die with their parent
(:func:`_worker_init`). The orchestration is in :mod:`gscnn_tf.data.convert`.
"""
from __future__ import annotations

import concurrent.futures as cf
import contextlib
import datetime as _dt
import glob
import hashlib
import json
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from typing import Callable, Optional, Sequence

import cv2
import numpy as np

from gscnn_tf.data.cityscapes import ConversionError, FileRef, Sample
from gscnn_tf.utils.atomic import atomic_path, atomic_write_text

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
LOCK_NAME = ".gscnn-convert.lock"
STAGING_SUFFIX = ".staging"


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
        raise write_error(path, e) from None
    return {"file": os.path.basename(path), "num_examples": len(samples), "sha256": digest, "bytes": size}


def write_error(path: str, error: BaseException) -> ConversionError:
    """One-line error naming the output file (disk full, quota, I/O error)."""
    reason = getattr(error, "strerror", None) or getattr(error, "message", None) or str(error)
    reason = reason.splitlines()[0] if reason else type(error).__name__
    if reason.startswith(path):  # TensorFlow's messages start with the file name
        reason = reason[len(path):].lstrip(" ;:")
    return ConversionError(f"{path}: cannot write ({reason}); complete shards and any earlier dataset are kept, "
                           "free space and rerun to resume")


def write_json(path: str, data: dict) -> None:
    try:
        atomic_write_text(path, json.dumps(data, indent=1))
    except OSError as e:
        raise write_error(path, e) from None


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
    # Ctrl-C reaches the whole process group: only the parent decides what stops (it lets the
    # shards being written finish, so none is left half-written).
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def watch():
        while True:
            time.sleep(1.0)
            if os.getppid() != parent_pid:
                os._exit(1)

    threading.Thread(target=watch, name="parent-watchdog", daemon=True).start()
    from gscnn_tf.utils.quiet_tensorflow import import_tensorflow_quietly

    import_tensorflow_quietly()


def worker_write_shard(args) -> dict:
    """Process-pool entry point (module-level so it pickles under 'spawn')."""
    path, samples, lut, known = args
    return write_shard(path, samples, lut, known)

def check_out_dir(out_dir: str) -> None:
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


def load_json(path: str) -> Optional[dict]:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def cleanup_split(out_dir: str, split: str, keep: set) -> None:
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


def move_shard(src_dir: str, dst_dir: str, name: str) -> None:
    """Moves a shard and its sidecar (shard first: a sidecar never describes a missing shard)."""
    for n in (name, os.path.basename(sidecar_path(os.path.join(src_dir, name)))):
        if os.path.exists(os.path.join(src_dir, n)):
            os.replace(os.path.join(src_dir, n), os.path.join(dst_dir, n))


def publish_staged(out_dir: str, split: str) -> bool:
    """Swaps a complete staged split in (idempotent: an interrupted swap is finished by rerunning it).

    The staged manifest (written last into the staging directory) marks it complete. Order:
    old manifest removed (the split is "being replaced" for readers), staged shards moved in
    over same-named old ones, old shards the new plan does not list removed, new manifest
    moved in, staging directory removed. Returns False when nothing complete was staged.
    """
    stage = staging_dir(out_dir, split)
    staged_manifest = manifest_path(stage, split)
    manifest = load_json(staged_manifest)
    if manifest is None:
        return False
    keep = {s["file"] for s in manifest.get("shards", [])}
    with contextlib.suppress(FileNotFoundError):
        os.remove(manifest_path(out_dir, split))
    for name in sorted(os.listdir(stage)):
        if name in keep:
            move_shard(stage, out_dir, name)
    for shard in glob.glob(os.path.join(out_dir, f"{split}_fine-*-of-*.tfrecord")):
        if os.path.basename(shard) not in keep:
            for p in (shard, sidecar_path(shard)):
                with contextlib.suppress(OSError):
                    os.remove(p)
    os.replace(staged_manifest, manifest_path(out_dir, split))
    shutil.rmtree(stage, ignore_errors=True)
    return True
