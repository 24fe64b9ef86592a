"""Write-then-rename helpers: a crash or bad input never leaves a half-written file behind.

Every artefact the package writes (TFRecord shards, manifests, configs, checkpoints,
SavedModel exports, PNGs) goes through one of these: the data is written under a
temporary name in the destination's own directory (same filesystem, so the final
``os.replace`` is atomic) and renamed only when complete.

Temporary names are ``.<final name>.<8 random chars>.tmp[<suffix>]`` (directories may
also get ``.old`` appended while being swapped); :func:`remove_stale_temporaries` finds
and deletes the ones a killed process left behind. ``mkstemp``/``mkdtemp`` create them
private (0600/0700); they are given the mode any other tool would create (``0666`` /
``0777`` minus the umask) just before they are published.
"""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from typing import Iterator

# tempfile's random part: 8 characters of [a-z0-9_].
_TEMP_NAME = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp(\..*)?$")


def current_umask() -> int:
    """The process umask, read without changing it where Linux allows (``/proc``)."""
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    umask = os.umask(0o022)  # no /proc: the classic read-by-setting (not thread-safe)
    os.umask(umask)
    return umask


def publish_mode(path: str) -> None:
    """Gives a temporary file or directory the mode a plain ``open``/``mkdir`` would have."""
    base = 0o777 if os.path.isdir(path) else 0o666
    os.chmod(path, base & ~current_umask())


def _tmp_sibling(path: str, suffix: str = "") -> str:
    directory = os.path.dirname(os.path.abspath(path)) or "."
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=f".tmp{suffix}", dir=directory)
    os.close(fd)
    return tmp


@contextlib.contextmanager
def atomic_path(path: str, suffix: str = "") -> Iterator[str]:
    """Yields a temporary file path; renames it to ``path`` on success, deletes it on error.

    ``suffix`` lets writers that care about the extension (e.g. ``.png`` for OpenCV) see it.
    The published file follows the umask (``0666 & ~umask``), like any other tool's.
    """
    tmp = _tmp_sibling(path, suffix)
    try:
        yield tmp
        publish_mode(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def atomic_write_bytes(path: str, data: bytes) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def atomic_write_text(path: str, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


@contextlib.contextmanager
def atomic_directory(path: str, overwrite: bool = False) -> Iterator[str]:
    """Yields a temporary directory that becomes ``path`` only if the block succeeds.

    Used for SavedModel exports and checkpoints, which are directories. With
    ``overwrite=False`` an existing ``path`` is an error (checked before any work).
    The published directory follows the umask (``0777 & ~umask``).
    """
    path = os.path.abspath(path)
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(f"{path}: already exists (refusing to overwrite)")
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=parent)
    try:
        yield tmp
        publish_mode(tmp)
        if os.path.exists(path):
            old = tmp + ".old"
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def is_temporary_name(name: str) -> bool:
    """True for the names :func:`atomic_path` and :func:`atomic_directory` write under."""
    return bool(_TEMP_NAME.match(name))


def remove_stale_temporaries(directory: str) -> list:
    """Deletes the temporary files/directories a killed writer left in ``directory``.

    Only names of this module's pattern directly inside ``directory`` are touched (not
    recursive). Call it only where no other process is writing. Returns the removed paths.
    """
    removed = []
    if not os.path.isdir(directory):
        return removed
    for name in sorted(os.listdir(directory)):
        if not is_temporary_name(name):
            continue
        path = os.path.join(directory, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
        removed.append(path)
    return removed
