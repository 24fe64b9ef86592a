"""Published files and directories get the mode the user's umask gives any other tool's output.

Temporary files and directories (``tempfile.mkstemp`` / ``mkdtemp``) are created private
(0600 / 0700) and keep that mode when renamed into place; a SavedModel published that way
cannot be loaded by TF Serving running as another user. Call these on what is published.
"""
from __future__ import annotations

import contextlib
import os


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def follow_umask(path: str) -> None:
    """chmod ``path`` to 0666 (files) or 0777 (directories) minus the umask; errors are ignored."""
    mode = 0o777 if os.path.isdir(path) else 0o666
    with contextlib.suppress(OSError):
        os.chmod(path, mode & ~current_umask())


def follow_umask_tree(root: str) -> None:
    """:func:`follow_umask` on ``root`` and everything under it (symlinks are left alone)."""
    follow_umask(root)
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(directory, name)
            if not os.path.islink(path):
                follow_umask(path)
