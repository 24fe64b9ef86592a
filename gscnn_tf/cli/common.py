"""Flags and behaviour shared by every command-line entry point."""
from __future__ import annotations

import logging
import os
import sys


def add_common_flags(parser) -> None:
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="logging verbosity (default INFO)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars; warnings and errors only")


def configure_logging(args) -> None:
    level = "WARNING" if getattr(args, "quiet", False) else getattr(args, "log_level", "INFO")
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ banner noise
    for noisy in ("absl", "tensorflow", "h5py"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))


def fail(message: str, code: int = 2) -> int:
    """Reports a user error as one line on stderr and returns the exit code."""
    print(f"error: {message}", file=sys.stderr)
    return code


def progress_enabled(args=None) -> bool:
    return sys.stderr.isatty() and not getattr(args, "quiet", False)
