"""Version directories of an export root (what TF Serving sees), the export lock and leftovers."""
from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
from typing import Optional

from gscnn_tf.utils.atomic import is_temporary_name

logger = logging.getLogger(__name__)


def existing_versions(export_dir: str) -> list:
    """Sorted integer version directories under ``export_dir`` (what TF Serving would see)."""
    if not os.path.isdir(export_dir):
        return []
    return sorted(int(n) for n in os.listdir(export_dir)
                  if re.fullmatch(r"\d+", n) and os.path.isdir(os.path.join(export_dir, n)))


def next_version(export_dir: str) -> int:
    versions = existing_versions(export_dir)
    return versions[-1] + 1 if versions else 1


def find_saved_model(path: str, version: Optional[int] = None) -> str:
    """A SavedModel directory, or an export root -> its highest (or the given) complete version."""
    if version is None and os.path.isfile(os.path.join(path, "saved_model.pb")):
        return path
    complete = [v for v in existing_versions(path) if os.path.isfile(os.path.join(path, str(v), "saved_model.pb"))]
    if version is not None:
        if version not in complete:
            raise FileNotFoundError(f"{path}: no SavedModel version {version} (found {complete or 'none'})")
        return os.path.join(path, str(version))
    if not complete:
        raise FileNotFoundError(f"{path}: not a SavedModel (no saved_model.pb) nor an export dir with versions")
    return os.path.join(path, str(complete[-1]))


def is_saved_model_path(path: str) -> bool:
    """True for a SavedModel directory or an export root holding at least one complete version."""
    try:
        find_saved_model(path)
    except FileNotFoundError:
        return False
    return True


@contextlib.contextmanager
def export_lock(export_dir: str):
    """``flock`` on the ``export_dir`` directory itself (no lock file among the versions): yields
    True when this export is the only one running (then leftovers of killed exports can be
    removed safely), False when another export holds it (both go ahead; nothing is removed)."""
    import fcntl

    fd = os.open(export_dir, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            exclusive = True
        except OSError:
            exclusive = False
        yield exclusive
    finally:
        os.close(fd)


def remove_stale_export_temps(export_dir: str) -> list:
    """Removes the hidden temporary directories that killed exports left in ``export_dir``.

    Only this tool's own names (``.<version>.<random>.tmp``, ``.<version>.<random>.tmp.old``,
    ``.gscnn_export_assets.<random>.tmp``); call while holding the export lock. Returns them.
    """
    removed = []
    for name in sorted(os.listdir(export_dir)):
        path = os.path.join(export_dir, name)
        if is_temporary_name(name) and os.path.isdir(path) and not os.path.islink(path):
            logger.warning("removing %s (left by an interrupted export)", path)
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed
