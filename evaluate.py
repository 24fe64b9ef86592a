#!/usr/bin/env python
"""Evaluate a trained Gated-SCNN model (see `python evaluate.py --help`)."""
import sys

from gscnn_tf.cli.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
