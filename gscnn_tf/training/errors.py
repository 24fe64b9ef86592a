"""Why a training run stops early, as exceptions the CLI turns into one line and an exit code."""
from __future__ import annotations

import contextlib
import errno
from typing import Iterator


class TrainingError(RuntimeError):
    """A run cannot start (bad data, refused config change, inconsistent resume state, ...): exit 2."""

    exit_code = 2


class TrainingFailed(TrainingError):
    """A started run cannot go on (diverged, disk full, corrupt data): exit 1.

    Whatever was last written completely (backup, checkpoints) is still there.
    """

    exit_code = 1


def describe_os_error(exc: OSError) -> str:
    """A short reason: h5py/zip errors bury ``No space left on device`` in a long message."""
    text = str(exc)
    if exc.errno == errno.ENOSPC and exc.strerror:
        return exc.strerror
    if exc.errno == errno.ENOSPC or "No space left" in text or "errno = 28" in text:
        return "no space left on device"
    if exc.strerror:
        return exc.strerror
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    return first[:200]


@contextlib.contextmanager
def writing(path: str) -> Iterator[None]:
    """Turns an ``OSError`` while writing ``path`` into a one-line :class:`TrainingFailed`."""
    try:
        yield
    except OSError as exc:
        raise TrainingFailed(
            f"cannot write {path}: {describe_os_error(exc)}; the previous complete files and the "
            "backup are intact: free space (or fix the directory) and rerun the same command to resume"
        ) from exc
