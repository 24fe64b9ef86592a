#!/usr/bin/env python
"""Segment images with a Gated-SCNN SavedModel or checkpoint (see --help)."""
import sys

from gscnn_tf.cli.predict import main

if __name__ == "__main__":
    sys.exit(main())
