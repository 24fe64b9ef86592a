#!/usr/bin/env python
"""Import the official PyTorch Gated-SCNN checkpoint (see `python import_official_checkpoint.py --help`)."""
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from gscnn_tf.cli.import_official import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
