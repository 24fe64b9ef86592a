"""Flags and behaviour shared by every command-line entry point.

Every CLI calls :func:`configure_logging` right after parsing its flags and before
anything imports TensorFlow: TensorFlow's C++ runtime prints start-up lines (oneDNN,
CPU features, ``failed call to cuInit`` on a machine without a GPU) through absl
*before* ``TF_CPP_MIN_LOG_LEVEL`` takes effect, so the import itself is done here with
file descriptor 2 captured and those known lines dropped (anything else is passed on;
:mod:`gscnn_tf.utils.quiet_tensorflow`).
``--log-level DEBUG`` shows them all.
"""
from __future__ import annotations

import logging
import os
import sys

from gscnn_tf.utils.quiet_tensorflow import HIDDEN_STARTUP_LINES, import_tensorflow_quietly


def add_common_flags(parser) -> None:
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="logging verbosity (default INFO; DEBUG also shows TensorFlow's start-up lines)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars; warnings and errors only")


def tile_size_arg(text: str) -> tuple:
    """argparse type of ``--tile-size``: ``"512x1024"`` -> (512, 1024) (height x width), ``"512"`` -> (512, 512)."""
    import argparse

    parts = text.lower().split("x")
    try:
        values = tuple(int(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected HxW, e.g. 512x1024") from None
    if len(values) == 1:
        values = values * 2
    if len(values) != 2 or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected HxW with positive H and W, e.g. 512x1024")
    return values


def configure_logging(args, tensorflow: bool = True) -> None:
    """Sets the log level and, with ``tensorflow``, imports TensorFlow without its start-up noise.

    ``tensorflow=False`` (tools that import it later or in worker processes) only sets the
    environment; call :func:`import_tensorflow_quietly` where TensorFlow is first needed.
    """
    level = "WARNING" if getattr(args, "quiet", False) else getattr(args, "log_level", "INFO")
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    verbose = level == "DEBUG"
    # Later C++ messages (after start-up) respect this; DEBUG shows TensorFlow's INFO lines too.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "0" if verbose else "2")
    for noisy in ("absl", "tensorflow", "h5py"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))
    if tensorflow:
        import_tensorflow_quietly(verbose=verbose)
    if verbose and HIDDEN_STARTUP_LINES:  # importing gscnn_tf imported TensorFlow quietly already
        sys.stderr.write("\n".join(HIDDEN_STARTUP_LINES) + "\n")


def fail(message: str, code: int = 2) -> int:
    """Reports a user error as one line on stderr and returns the exit code."""
    print(f"error: {message}", file=sys.stderr)
    return code


def checkpoint_config(checkpoint: str, config_path=None, overrides=()):
    """The experiment config for ``checkpoint``: ``--config``, else the run's config.yaml (next to
    the checkpoint or one directory up), with the ``--set`` overrides applied on top.

    None when there is neither a file nor an override (``load_inference_model`` then uses the
    run's config.yaml or a ``.keras`` model's own). Raises ``ConfigError``.
    """
    from gscnn_tf.config import load_config
    from gscnn_tf.training.checkpoints import find_run_config

    path = config_path or find_run_config(checkpoint)
    if path is None and not overrides:
        return None
    return load_config(path, list(overrides))


def progress_enabled(args=None) -> bool:
    return sys.stderr.isatty() and not getattr(args, "quiet", False)
