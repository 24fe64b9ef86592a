#!/usr/bin/env python
"""Evaluate a trained Gated-SCNN model (see `python evaluate.py --help`)."""
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from gscnn_tf.cli.evaluate import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
