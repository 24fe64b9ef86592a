"""Flags and behaviour shared by every command-line entry point.

Every CLI calls :func:`configure_logging` right after parsing its flags and before
anything imports TensorFlow: TensorFlow's C++ runtime prints start-up lines (oneDNN,
CPU features, ``failed call to cuInit`` on a machine without a GPU) through absl
*before* ``TF_CPP_MIN_LOG_LEVEL`` takes effect, so the import itself is done here with
file descriptor 2 captured and those known lines dropped (anything else is passed on).
``--log-level DEBUG`` shows them all.
"""
from __future__ import annotations

import logging
import os
import re
import sys
import tempfile

# TensorFlow / XLA start-up lines that say nothing about the user's run.
_TF_NOISE = re.compile(
    r"^WARNING: All log messages before absl::InitializeLog\(\) is called"
    r"|^To enable the following instructions:"
    r"|^[IW]\d{4} [\d:. ]+\d+ \S+\.(cc|h):\d+\]"
    r"|^E\d{4} [\d:. ]+\d+ (cuda_\w+|cuda_platform|cuda_executor|cuda_diagnostics)\.cc:\d+\]"
)


def add_common_flags(parser) -> None:
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="logging verbosity (default INFO; DEBUG also shows TensorFlow's start-up lines)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars; warnings and errors only")


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


def import_tensorflow_quietly(verbose: bool = False):
    """Imports TensorFlow (and probes for GPUs, which prints cuInit's error) with its known
    start-up lines filtered out of stderr; returns the module. No-op if already imported."""
    if "tensorflow" in sys.modules or verbose:
        import tensorflow as tf

        return tf
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            import tensorflow as tf

            tf.config.list_physical_devices("GPU")
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            text = capture.read().decode("utf-8", "replace")
            kept = [line for line in text.splitlines() if line.strip() and not _TF_NOISE.search(line)]
            if kept:
                sys.stderr.write("\n".join(kept) + "\n")
    return tf


def fail(message: str, code: int = 2) -> int:
    """Reports a user error as one line on stderr and returns the exit code."""
    print(f"error: {message}", file=sys.stderr)
    return code


def progress_enabled(args=None) -> bool:
    return sys.stderr.isatty() and not getattr(args, "quiet", False)
